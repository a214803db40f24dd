"""The demo experiment: does token selection matter, in accuracy, depth and speed?

A small, reproducible experiment on generated data that a 2-core CPU runs in minutes,
built from the functions the commands use (``data make``, ``train classifier|selector|
depth``, ``sweep``, ``report``, ``plot``). For each seed (the seed drives the data, the
initial weights and the selector training):

1. data: ``shapes`` (the class is one small object among class-free clutter; the object
   lies inside the evaluation crop) for training and a separate validation set of
   ``val_images`` images, and ``rooms`` (ray-cast rooms with exact depth, NYU's .mat
   format) for depth;
2. ``train classifier``: :data:`MODEL` from scratch on ``shapes``;
3. ``train selector``: ToSA's selectors distilled from it (backbone frozen), with their
   top-k recall against the teacher;
4. ``train depth``: a DPT-style depth head on the frozen dense backbone, on ``rooms``;
5. ``sweep``: dense, ToSA (distilled selectors), ToMe, EViT and the random control at
   every keep, each with top-1 and the object-token share on the validation set,
   delta1/AbsRel on the rooms test split, and a paired speed-up against dense;
   and ToSA with *untrained* selectors (they reuse the current attention) at the same
   keeps, accuracy only (its compute is the distilled ToSA's);
6. token pictures of two validation images (first seed).

No method is fine-tuned: the backbone is the dense one for every method, ToSA's selectors
alone are trained (distilled, backbone frozen), as the paper's selector training does.
EViT and ToMe run off the shelf, as their papers also report them.

The summary (``OUT/summary``) reads every seed's sweeps as one (mean ± sample standard
deviation over seeds, :mod:`tosa_bench.results.aggregate`): ``table.md`` with the
object-token share per block and the selectors' recall, ``summary.json``, and the
figures (trade-offs with error bars, speed-up, object share against keep).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

#: the demo's ViT (``tosa_bench.models.configs``): big enough that token reduction pays in
#: wall time on a 2-core CPU, small enough to train there in minutes
MODEL = "demo_vit"
#: object radius (share of the image side) and the central share that holds the object
RADIUS = (0.12, 0.16)
INNER = 0.875
#: rooms images: height in pixels (width 4/3 of it, rounded to 16: 48 -> 64)
ROOMS_HEIGHT = 48
#: where ToSA's selectors (and the random control's choice) sit: every block but the first.
#: With the default ``alternate`` (blocks 1, 3, 5 of 6) every token still runs blocks
#: 0, 2 and 4, and the task did not discriminate: on seed 0's classifier the random
#: control at keep 0.5 read 90.2% top-1 against dense's 93.1%. With ``all`` the same
#: classifier read 85.8% under the random control and 93.1% under distilled ToSA
#: (selectors trained for ``all``), so which tokens are chosen visibly matters.
PLACEMENT = "all"
#: per seed: how many choosing blocks each rooms patch ran (:func:`depth_token_coverage`)
COVERAGE_FILE = "coverage.json"


@dataclass(frozen=True)
class DemoConfig:
    """Everything one demo run does (sizes in images, budgets in seconds)."""

    keeps: tuple[float, ...] = (0.25, 0.5, 0.75)
    seeds: int = 1
    train_images: int = 10000
    val_images: int = 1000
    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    min_crop_scale: float = 0.8
    selector_epochs: int = 2
    selector_images: int = 4000
    rooms: int = 600
    depth_epochs: int = 6
    depth_features: int = 32
    sweep_batch: int = 64
    time_budget_s: float = 1.0
    pair_budget_s: float = 6.0
    pair_min_rounds: int = 12

    @classmethod
    def quick(cls) -> "DemoConfig":
        """The smoke test (tests and a first look): every step and every method's
        accuracy, on a tenth of the data with one epoch each; numbers are not results."""
        return cls(train_images=600, val_images=200, epochs=1, selector_epochs=1, selector_images=300, rooms=60,
                   depth_epochs=1, time_budget_s=0.2, pair_budget_s=1.0, pair_min_rounds=4)

    def with_overrides(self, **changes: Any) -> "DemoConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def data_seed(seed: int, part: int) -> int:
    """The generator seed of one data part (1 train, 2 validation, 3 rooms) of one seed."""
    return 1000 * seed + part


def run_seed(cfg: DemoConfig, seed: int, root: Path, device: str, step: Callable[[str], None]) -> dict[str, Path]:
    """Everything of one seed under ``root`` (module docstring); returns the paths the
    summary reads (``sweep``, ``untrained``, ``selector``)."""
    from tosa_bench.cli.sweep import run_plan
    from tosa_bench.cli.train import classifier_command, depth_command, selector_command
    from tosa_bench.data.synthetic import make_dataset, make_shapes
    from tosa_bench.methods import registry
    from tosa_bench.models.configs import get_config
    from tosa_bench.sweep.session import plan_new
    from tosa_bench.sweep.suite import Suite

    model_cfg = get_config(MODEL)
    size = int(model_cfg.img_size / 0.875)  # the evaluation resize: the crop then takes the centre
    data = root / "data"
    step(f"seed {seed}: generated data (ImageFolder JPEGs, NYU-format .mat)")
    train_dir = make_shapes(data / "shapes-train", n=cfg.train_images, size=size, seed=data_seed(seed, 1), radius=RADIUS, inner=INNER)
    val_dir = make_shapes(data / "shapes-val", n=cfg.val_images, size=size, seed=data_seed(seed, 2), radius=RADIUS, inner=INNER)
    rooms = make_dataset("rooms", data / "rooms", n=cfg.rooms, size=ROOMS_HEIGHT, seed=data_seed(seed, 3))

    step(f"seed {seed}: train classifier ({MODEL} from scratch, {cfg.epochs} epoch(s) on {cfg.train_images} images)")
    classifier_command(data=train_dir, model=MODEL, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                       min_crop_scale=cfg.min_crop_scale, warmup_epochs=min(1.0, cfg.epochs / 4), seed=seed, device=device,
                       workers=0, out_dir=root / "classifier")
    checkpoint = root / "classifier" / "checkpoint.safetensors"

    step(f"seed {seed}: train selector (ToSA's selectors at blocks '{PLACEMENT}', distilled from the frozen classifier)")
    selector_command(data=train_dir, model=MODEL, checkpoint=checkpoint, placement=PLACEMENT, keep=list(cfg.keeps), epochs=cfg.selector_epochs,
                     batch_size=cfg.batch_size, lr=1e-3, seed=seed, device=device, workers=0, limit=cfg.selector_images,
                     out_dir=root / "selector")
    selector = root / "selector" / "selectors.safetensors"

    step(f"seed {seed}: train depth (DPT-style head on the frozen dense backbone, rooms)")
    depth_command(nyu=rooms, model=MODEL, variant=registry.DENSE, checkpoint=checkpoint, features=cfg.depth_features,
                  epochs=cfg.depth_epochs, batch_size=32, lr=2e-3, seed=seed, device=device, workers=0, out_dir=root / "depth")
    depth = root / "depth" / "depth.safetensors"

    step(f"seed {seed}: sweep every method at keeps {', '.join(map(str, cfg.keeps))} (top-1, object share, depth, speed-up)")
    common = dict(models=(MODEL,), keeps=cfg.keeps, batch_size=(cfg.sweep_batch,), devices=(device,), checkpoint={"*": str(checkpoint)},
                  imagenet=str(val_dir), nyu=str(rooms), depth_checkpoint={"*": str(depth)}, num_workers=0, seed=seed,
                  placements=(PLACEMENT,))
    suite = Suite().with_overrides(**common, selector={"*": str(selector)}, time_budget_s=cfg.time_budget_s, pair_budget_s=cfg.pair_budget_s,
                                   pair_min_rounds=cfg.pair_min_rounds, latency=False, memory=False)
    run_plan(plan_new(suite, root / "sweep"), figures=False)
    step(f"seed {seed}: ToSA with untrained selectors (reuse of the current attention), accuracy only")
    untrained = Suite().with_overrides(**common, variants=registry.selector_takers(), timing=False, latency=False, memory=False)
    run_plan(plan_new(untrained, root / "sweep-untrained"), figures=False)
    which = ", ".join(registry.get(n).display for n in registry.bypassers())
    step(f"seed {seed}: how many blocks each rooms patch ran ({which}; keep {coverage_keep(cfg):g})")
    write_depth_coverage(root, coverage_keep(cfg))
    return {"sweep": root / "sweep", "untrained": root / "sweep-untrained", "selector": root / "selector", "val": val_dir,
            "coverage": root / COVERAGE_FILE}


def coverage_keep(cfg: DemoConfig) -> float:
    """The keep the coverage is measured at: 0.5 where swept, else the middle keep."""
    return 0.5 if 0.5 in cfg.keeps else sorted(cfg.keeps)[len(cfg.keeps) // 2]


def depth_token_coverage(root: Path, keep: float, batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """For every method whose tokens bypass blocks (distilled ToSA and the random control)
    at ``keep`` (:data:`PLACEMENT`), on the rooms test split through the seed's depth
    model: the share of patch tokens that ran 0..K of the K choosing blocks
    (:mod:`tosa_bench.tasks.token_coverage`). Why ToSA's depth can trail the random
    control's: a persistent choice leaves some patches with the feature of the block
    before the first choosing block."""
    import torch
    import torch.nn.functional as F

    from tosa_bench.build import build_model
    from tosa_bench.data.loader import make_loader
    from tosa_bench.data.nyu import build_nyu
    from tosa_bench.methods import registry
    from tosa_bench.models.configs import get_config
    from tosa_bench.tasks.accuracy import depth_model
    from tosa_bench.tasks.evaluate import round_to_patch
    from tosa_bench.tasks.token_coverage import BlocksRun

    data = build_nyu(root / "data" / "rooms", split="test")
    model_cfg = get_config(MODEL)
    patch = model_cfg.patch_size
    out = {}
    for variant in registry.bypassers():  # ToSA and the random control
        method = registry.get(variant)
        options = method.natural_options(keep, model_cfg, registry.Knobs(placements=(PLACEMENT,)))
        selector = root / "selector" / "selectors.safetensors" if method.accepts_selector else None
        backbone = build_model(MODEL, variant, checkpoint=root / "classifier" / "checkpoint.safetensors", selector=selector, **options)
        net = depth_model(backbone, root / "depth" / "depth.safetensors")
        counter = BlocksRun()
        with torch.inference_mode():
            for images, gt in make_loader(data, batch_size, num_workers=0):
                size = round_to_patch((gt.shape[-2], gt.shape[-1]), patch)  # as the depth evaluation does
                net(F.interpolate(images, size=size, mode="bilinear", align_corners=False))
                counter.update(backbone.reducer.last_selection, 1 + (size[0] // patch) * (size[1] // patch))
        out[variant] = {**counter.compute(), "keep": keep, "images": len(data), "options": options}
    return out


def write_depth_coverage(root: Path, keep: float) -> Path:
    """:func:`depth_token_coverage` into ``root / COVERAGE_FILE`` (JSON)."""
    path = root / COVERAGE_FILE
    path.write_text(json.dumps(depth_token_coverage(root, keep), indent=1) + "\n", encoding="utf-8")
    return path


def selector_recall(selector_run: Path) -> dict[str, float]:
    """The last epoch's top-k recall against the teacher and its chance, per keep."""
    from tosa_bench.train.loop import read_history

    rows = read_history(selector_run)
    last = rows[-1] if rows else {}
    return {k: float(v) for k, v in last.items() if k.startswith(("recall@", "chance@"))}


def summary(seed_paths: Sequence[dict[str, Path]], out: Path) -> dict[str, Any]:
    """Aggregate the seeds' sweeps into ``out`` (table.md, summary.json, figures) and
    return the summary as a dict (what the CLI prints from)."""
    from tosa_bench.results import load_run
    from tosa_bench.results.aggregate import aggregate_records, spread
    from tosa_bench.results.figures import plot_runs
    from tosa_bench.results.load import RunData
    from tosa_bench.results.tables import frame, to_markdown

    out.mkdir(parents=True, exist_ok=True)
    per_seed = []
    env = None
    for paths in seed_paths:
        sweep, untrained = load_run(paths["sweep"]), load_run(paths["untrained"])
        env = env or sweep.env
        per_seed.append(sweep.records + untrained.records)
    records = aggregate_records(per_seed)
    run = RunData(out, records, env)
    recalls = [selector_recall(p["selector"]) for p in seed_paths]
    recall = {k: spread([r[k] for r in recalls if k in r]) for k in sorted({k for r in recalls for k in r})}
    coverage = coverage_summary([json.loads(Path(p["coverage"]).read_text()) for p in seed_paths if Path(p.get("coverage", "")).is_file()])
    table = to_markdown(frame(records), env)
    text = ["# Demo summary", "", f"{len(seed_paths)} seed(s); every value below is the mean ± sample standard deviation "
            "over seeds (n) where n > 1.", "", "No method is fine-tuned: every method runs the dense classifier's weights (and the "
            "depth head trained on the dense backbone); only ToSA's selectors are trained, distilled with the backbone frozen "
            "('trained selectors').", "", "## Every method", "", table, "", "## Where the selection lands: object tokens per block", "",
            object_share_table(records), "", "## ToSA selectors against their teacher", "", recall_table(recall), "",
            "## How many blocks each patch ran (depth)", "", coverage_table(coverage), ""]
    (out / "table.md").write_text("\n".join(text), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps({"seeds": len(seed_paths), "records": records, "selector_recall": recall,
                                                  "blocks_run": coverage},
                                                 indent=1, default=str) + "\n", encoding="utf-8")
    if env is not None:
        (out / "env.json").write_text(json.dumps(env, indent=1, default=str) + "\n", encoding="utf-8")
    report = plot_runs([run], out / "figures", formats=("png", "pdf"))
    return {"records": records, "recall": recall, "blocks_run": coverage, "figures": report}


def coverage_summary(per_seed: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The seeds' :func:`depth_token_coverage` as one: per variant, every bin of
    ``blocks_run_share`` as mean, sample sd, min, max and n over seeds."""
    from tosa_bench.results.aggregate import spread

    out: dict[str, dict[str, Any]] = {}
    for variant in sorted({v for seed in per_seed for v in seed}):
        runs = [seed[variant] for seed in per_seed if seed.get(variant, {}).get("blocks_run_share")]
        if not runs:
            continue
        bins = len(runs[0]["blocks_run_share"])
        out[variant] = {"blocks_run_share": [spread([r["blocks_run_share"][i] for r in runs]) for i in range(bins)],
                        "choosing_blocks": runs[0]["choosing_blocks"], "keep": runs[0]["keep"], "images": [r["images"] for r in runs]}
    return out


def coverage_table(coverage: dict[str, dict[str, Any]]) -> str:
    """Markdown: per variant, the share (%) of rooms patch tokens that ran 0..K of the K
    choosing blocks (mean ± sd over seeds)."""
    from tosa_bench.results.tables import _label

    if not coverage:
        return "(not measured)"
    first = next(iter(coverage.values()))
    bins = len(first["blocks_run_share"])
    lines = ["| method | keep | " + " | ".join(f"ran {i}" for i in range(bins)) + " | seeds |", "|---|---:|" + "---:|" * (bins + 1)]
    for variant, c in coverage.items():
        cells = [f"{100 * b['mean']:.1f}" + (f" ± {100 * b['sd']:.1f}" if b["n"] > 1 else "") for b in c["blocks_run_share"]]
        lines.append(f"| {_label(variant)} | {c['keep']:g} | " + " | ".join(cells) + f" | {c['blocks_run_share'][0]['n']} |")
    blocks = ", ".join(map(str, first["choosing_blocks"]))
    return "\n".join(lines) + (f"\n\nShare (%) of the rooms test split's patch tokens that ran 0, 1, ... of the choosing blocks "
                               f"({blocks}) in the depth model (ToSA: distilled selectors). A patch that ran none keeps the "
                               "feature it had before the first of them in every later block the depth head reads.")


def object_share_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: per method and keep, the object-token share of each choosing block
    (percent, mean ± sd over seeds) and its chance."""
    from tosa_bench.results.tables import _setting, _label

    rows = [r for r in records if isinstance(r.get("object_share"), dict)]
    if not rows:
        return "(no object-token share: the validation data has no object annotations)"
    blocks = sorted({int(b) for r in rows for b in r["object_share"]})
    head = "| method | setting | " + " | ".join(f"block {b}" for b in blocks) + " | mean | chance |"
    lines = [head, "|" + "---|" * (len(blocks) + 4)]
    for r in sorted(rows, key=lambda r: (-float(r["options"].get("keep", 0)), str(r.get("variant")), str(r.get("selector")))):
        cells = []
        for b in blocks:
            v = r["object_share"].get(str(b))
            sd = (r.get("object_share_sd") or {}).get(str(b))
            cells.append("" if v is None else f"{100 * v:.1f}" + (f" ± {100 * sd:.1f}" if sd and r.get("aggregated_runs", 1) > 1 else ""))
        mean_sd = r.get("object_share_mean_sd")
        mean = f"{100 * r['object_share_mean']:.1f}" + (f" ± {100 * mean_sd:.1f}" if mean_sd and r.get("aggregated_runs", 1) > 1 else "")
        lines.append(f"| {_label(r.get('variant'))} | {_setting(r)} | " + " | ".join(cells)
                     + f" | {mean} | {100 * r['object_chance_mean']:.1f} |")
    return "\n".join(lines) + ("\n\nShare (%) of the object's patch tokens (patches it covers by >= 10%) that ran the block "
                               "(ToSA, random) or were kept after it (EViT); chance: share of all patch tokens chosen there.")


def recall_table(recall: dict[str, dict[str, float]]) -> str:
    """Markdown: the distilled selectors' top-k recall against the teacher, per keep."""
    keeps = sorted({k.split("@", 1)[1] for k in recall if k.startswith("recall@")}, key=float)
    if not keeps:
        return "(no selector training history)"
    lines = ["| keep | top-k recall (%) | chance (%) | seeds |", "|---:|---:|---:|---:|"]
    for k in keeps:
        r, c = recall[f"recall@{k}"], recall.get(f"chance@{k}", {"mean": float("nan")})
        sd = f" ± {100 * r['sd']:.1f}" if r["n"] > 1 else ""
        lines.append(f"| {k} | {100 * r['mean']:.1f}{sd} | {100 * c['mean']:.1f} | {r['n']} |")
    return "\n".join(lines) + ("\n\nRecall: share of the teacher's top-k patch tokens (by the attention they receive in the "
                               "next block) that the selector's top-k holds, last epoch of distillation, on training images.")


def config_record(cfg: DemoConfig) -> dict[str, Any]:
    """The demo's settings as written to ``OUT/demo.json``."""
    return {"model": MODEL, "placement": PLACEMENT, "radius_share": list(RADIUS), "inner": INNER, "rooms_height": ROOMS_HEIGHT,
            **asdict(cfg)}


def mean_of(records: Sequence[dict[str, Any]], variant: str, keep: float | None, field: str, trained: bool | None = None) -> float | None:
    """One aggregated value (for the CLI's closing lines): ``field`` of ``variant`` at
    ``keep`` (None: the variant's only point, dense) and, for a method that takes
    selectors, with or without trained ones as ``trained`` says."""
    for r in records:
        if r.get("variant") != variant:
            continue
        if keep is not None and keep not in (r.get("grid_keeps") or [(r.get("options") or {}).get("keep")]):
            continue
        if trained is not None and bool(r.get("selector")) != trained:
            continue
        return r.get(field)
    return None


