"""``tosa-bench demo``: the demo experiment (:mod:`tosa_bench.experiments.demo`) from the
command line: does token selection matter, in accuracy, depth and speed, on generated
data a 2-core CPU learns in minutes. This module only parses options and prints."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from tosa_bench.cli.common import app, check_output_dir, guarded, out, say
from tosa_bench.errors import RunStateError


def _stepper() -> Callable[[str], None]:
    """A printer of step headings, each with the wall time since the stepper was made
    (what a user reads to see where the minutes go)."""
    start = time.monotonic()

    def step(text: str) -> None:
        out.print(f"\n== [{time.monotonic() - start:5.0f} s] {text}", highlight=False, markup=False, soft_wrap=True)

    return step


@app.command("demo")
@guarded
def demo_command(
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where everything goes (default runs/demo-<time>).")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, max=20, help="Run the whole experiment for seeds 0..N-1 (data, weights, selector training); the summary gives mean ± sample sd.")] = 1,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Classifier epochs (default 4; --quick: 1).")] = None,
    train_images: Annotated[Optional[int], typer.Option("--train-images", min=100, help="Generated training images (default 10000; --quick: 600).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    quick: Annotated[bool, typer.Option("--quick", help="Smoke test: every step and every method's accuracy on a tenth of the data, one epoch each; the numbers are not results.")] = False,
) -> None:
    """Train a small ViT on generated shapes, distil ToSA's selectors, train a depth
    head on generated rooms, then sweep dense, ToSA (distilled and untrained), ToMe, EViT
    and the random control at keeps 0.25/0.5/0.75 with top-1, object-token share, depth
    and paired speed-up; summary and figures in OUT/summary.

    Example: tosa-bench demo --seeds 3"""
    from tosa_bench.experiments import demo
    from tosa_bench.measure.spec import resolve_device

    cfg = (demo.DemoConfig.quick() if quick else demo.DemoConfig()).with_overrides(seeds=seeds, epochs=epochs, train_images=train_images)
    dev = resolve_device(device)
    root = out_dir or Path("runs") / f"demo-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    check_output_dir(root, "--out")
    if root.is_dir() and any(root.iterdir()):
        raise RunStateError(f"--out {root}: not empty; the demo writes into a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    record = {**demo.config_record(cfg), "device": dev, "quick": quick, "seed_wall_s": {}}

    def save() -> None:  # demo.json after every step that adds to it
        (root / "demo.json").write_text(json.dumps(record, indent=1) + "\n")

    save()

    begin = time.monotonic()
    step = _stepper()
    paths = []
    for s in range(cfg.seeds):
        start = time.monotonic()
        paths.append(demo.run_seed(cfg, s, root / f"seed-{s}", dev, step))
        record["seed_wall_s"][str(s)] = round(time.monotonic() - start, 1)  # data, training and sweeps of one seed
        save()
    step("token pictures of two validation images (seed 0)")
    _token_pictures(root, paths[0]["val"])
    step(f"summary over {cfg.seeds} seed(s)")
    result = demo.summary(paths, root / "summary")
    record["wall_s"] = round(time.monotonic() - begin, 1)  # everything, pictures and summary included
    save()
    _closing_lines(result["records"], result["recall"], cfg)
    _coverage_line(result["blocks_run"])
    say(f"demo done in {record['wall_s']:.0f} s: {root} (summary: {root / 'summary' / 'table.md'}; figures: {root / 'summary' / 'figures'})", prefix="")


def _token_pictures(root: Path, val_dir: Path) -> None:
    from tosa_bench.experiments.demo import MODEL, PLACEMENT
    from tosa_bench.methods.registry import Knobs, builtin_names, get, is_dense
    from tosa_bench.models.configs import get_config
    from tosa_bench.results.tokens import token_pictures

    seed0 = root / "seed-0"
    images = sorted(val_dir.rglob("*.JPEG"))[:2]
    written = []
    for variant in (n for n in builtin_names() if not is_dense(n) and not get(n).control):  # ToSA, ToMe, EViT
        options = get(variant).natural_options(0.5, get_config(MODEL), Knobs(placements=(PLACEMENT,)))
        selector = seed0 / "selector" / "selectors.safetensors" if get(variant).accepts_selector else None
        written += token_pictures(images, MODEL, variant, options, root / "tokens",
                                  checkpoint=seed0 / "classifier" / "checkpoint.safetensors", selector=selector, formats=("png",))
    out.print(f"{len(written)} pictures in {root / 'tokens'}", highlight=False, markup=False)


def _closing_lines(records: list[dict], recall: dict, cfg) -> None:
    """The experiment's answer in a few lines: top-1, object share, depth and speed-up at keep 0.5."""
    from tosa_bench.experiments.demo import mean_of
    from tosa_bench.methods import registry

    def fmt(v, scale=1.0, digits=1, unit=""):
        return "n/m" if v is None else f"{v * scale:.{digits}f}{unit}"

    keep = 0.5 if 0.5 in cfg.keeps else cfg.keeps[len(cfg.keeps) // 2]
    out.print(f"\nat keep {keep:g} (mean over {cfg.seeds} seed(s)):", highlight=False, markup=False)
    for name in registry.names():
        method = registry.get(name)
        dense = registry.is_dense(name)
        for trained in ((True, False) if method.accepts_selector else (None,)):
            label = method.display + {True: " (distilled)", False: " (untrained)", None: ""}[trained]

            def get(field: str) -> float | None:
                return mean_of(records, name, None if dense else keep, field, trained)

            out.print(f"  {label:22} top-1 {fmt(get('top1'), unit='%')}  object tokens {fmt(get('object_share_mean'), 100, unit='%')}"
                      f"  delta1 {fmt(get('delta1'), digits=3)}  speed-up {fmt(get('speedup_paired'), digits=2, unit='x')}",
                      highlight=False, markup=False, soft_wrap=True)


def _coverage_line(coverage: dict) -> None:
    """Depth's side of the story: the share of rooms patches that ran none of the choosing blocks."""
    from tosa_bench.methods.registry import get

    parts = [f"{get(v).display} {100 * c['blocks_run_share'][0]['mean']:.1f}%" for v, c in coverage.items()]
    if parts:
        blocks = ", ".join(map(str, next(iter(coverage.values()))["choosing_blocks"]))
        out.print(f"  rooms patches that ran none of blocks {blocks} (depth head reads stale features there): " + ", ".join(parts),
                  highlight=False, markup=False, soft_wrap=True)
