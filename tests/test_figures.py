"""Figures (`tosa-bench plot`, results/figures.py) and token pictures (`show-tokens`,
results/tokens.py).

Most tests draw from a run written by hand through the real store, so that every value
a figure shows is known: the drawn data are checked against it (Pareto front, speed-up
and its interval, the ideal, tokens per block), not only that a file appeared. One test
draws the figures of a real tiny sweep end to end.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tosa_bench.cli import app
from tosa_bench.methods import registry
from tosa_bench.results import figures as F
from tosa_bench.results.store import RunStore
from tosa_bench.results.tokens import block_masks

runner = CliRunner()

ENV = {"device": "cpu", "device_name": "Test CPU", "torch": "2.14.1+test", "logical_cpus": 2}
DENSE_GMACS = 4.0


def _record(variant, keep, *, placement="alternate", gmacs, speedup=None, ci=None, noisy=False, top1=None,
            weights="checkpoint", mem=None, tokens=None, tp=None, r=None):
    options = {} if variant == "dense" else ({"r": r} if variant == "tome" else {"keep": keep})
    if variant in ("tosa", "random"):
        options["placement"] = placement
    h = f"{variant}-{keep}-{placement}-{r}"
    return {
        "config_hash": h, "status": "ok", "error": None, "model": "deit_small_patch16_224", "variant": variant,
        "keep": keep, "options": options, "resolved_options": options, "batch_size": 8, "dtype": "fp32", "device": "cpu",
        "img_size": 224, "grid_keeps": [keep] if keep is not None else [], "placement_label": placement if variant in ("tosa", "random") else None,
        "params": 22_000_000, "gmacs": gmacs, "throughput_img_s": tp if tp is not None else 100.0 * DENSE_GMACS / gmacs,
        "speedup_paired": speedup, "speedup_paired_ci_low": ci[0] if ci else None, "speedup_paired_ci_high": ci[1] if ci else None,
        "speedup_paired_noisy": noisy, "settings": {"noise_threshold": 0.05}, "peak_mem_mb": mem,
        "top1": top1, "weights": weights if top1 is not None else None, "threads": 2,
        # after the attention a block may hand on fewer tokens (EViT); the figure shows the attention's
        "tokens_per_block": [[t, t - 1 if variant == "evit" else t] for t in (tokens or [197] * 12)],
    }


ALT = [197, 99] * 6
HALF = [197] * 6 + [99] * 6


def _records(with_accuracy=True):
    acc = (lambda v: v) if with_accuracy else (lambda v: None)
    return [
        _record("dense", None, gmacs=DENSE_GMACS, top1=acc(79.8), mem=40.0, tp=100.0),
        _record("tosa", 0.5, gmacs=3.2, speedup=1.20, ci=(1.15, 1.25), top1=acc(78.0), mem=46.0, tokens=ALT),
        _record("tosa", 0.7, gmacs=3.6, speedup=1.08, ci=(1.02, 1.20), noisy=True, top1=acc(79.5), mem=44.0),
        _record("tosa", 0.5, placement="second-half", gmacs=3.2, speedup=1.18, ci=(1.10, 1.22), top1=acc(77.0), mem=45.0, tokens=HALF),
        _record("tome", 0.5, r=8, gmacs=2.5, speedup=1.45, ci=(1.40, 1.50), top1=acc(77.5), mem=30.0),
        _record("evit", 0.5, gmacs=2.0, speedup=1.70, ci=(1.60, 1.80), top1=acc(76.0), mem=28.0),
    ]


def _write_run(path, records, env=ENV):
    store = RunStore.create(path)
    store.write_json("env.json", env)
    store.open_for_append()
    for r in records:
        store.append(r)
    return path


@pytest.fixture()
def run(tmp_path):
    return _write_run(tmp_path / "run", _records())


def _line(fig, label):
    found = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == label]
    assert found, f"no line {label!r} in {[ln.get_label() for ax in fig.axes for ln in ax.get_lines()]}"
    return found[0]


# ------------------------------------------------------------------------- Pareto front
def test_pareto_front_hand_made():
    # cost (lower better), accuracy (higher better)
    xs = [1.0, 2.0, 3.0, 2.5, 1.5, 4.0]
    ys = [70.0, 75.0, 80.0, 74.0, 69.0, 80.0]
    # 2.5/74 is beaten by 2.0/75; 1.5/69 by 1.0/70; 4.0/80 by 3.0/80 (same accuracy, cheaper)
    assert F.pareto_front(xs, ys) == [0, 1, 2]


def test_pareto_front_ties_and_duplicates():
    # equal cost: only the more accurate one; exact duplicates: both stay (neither is better)
    assert F.pareto_front([1.0, 1.0], [70.0, 71.0]) == [1]
    assert F.pareto_front([1.0, 1.0, 2.0], [70.0, 70.0, 72.0]) == [0, 1, 2]
    assert F.pareto_front([], []) == []
    assert F.pareto_front([1.0], [5.0]) == [0]


def test_pareto_front_directions_and_nan():
    # throughput: higher better; AbsRel: lower better
    xs = [100.0, 200.0, 150.0, float("nan")]
    ys = [0.10, 0.12, 0.13, 0.01]
    assert F.pareto_front(xs, ys, x_lower_better=False, y_higher_better=False) == [0, 1]
    assert F.pareto_front(xs, ys, x_lower_better=False, y_higher_better=True) == [2, 1]


# ------------------------------------------------------------------------- the drawn data
def test_tradeoff_draws_the_points_and_the_front(run):
    data = F.plot_data([run])
    drawn = F._draw(lambda: F.tradeoff(data, "gmacs", "top1"))
    front = _line(drawn.figure, "Pareto front")
    # all points (gmacs, top1): dense (4, 79.8), tosa .5 alt (3.2, 78), tosa .7 (3.6, 79.5),
    # tosa .5 half (3.2, 77), tome (2.5, 77.5), evit (2.0, 76): the front by cost
    assert list(front.get_xdata()) == [2.0, 2.5, 3.2, 3.6, 4.0]
    assert list(front.get_ydata()) == [76.0, 77.5, 78.0, 79.5, 79.8]
    alt = _line(drawn.figure, "ToSA (alternate, untrained selectors)")
    assert list(alt.get_xdata()) == [3.2, 3.6] and list(alt.get_ydata()) == [78.0, 79.5]  # ordered by keep
    dense = _line(drawn.figure, "Dense")
    assert dense.get_marker() == "*" and list(dense.get_xdata()) == [4.0]
    labels = {t.get_text() for t in drawn.figure.axes[0].texts}
    assert {"0.5", "0.7", "r=8"} <= labels


def test_speedup_figure_values_interval_and_ideal(run):
    data = F.plot_data([run])
    fig = F._draw(lambda: F.speedup_vs_keep(data)).figure
    ax = fig.axes[0]
    ideal = [ln for ln in ax.get_lines() if ln.get_label() == "_ideal EViT"]
    assert len(ideal) == 1 and list(ideal[0].get_ydata()) == pytest.approx([DENSE_GMACS / 2.0])
    # the error bars of ToSA (alternate, untrained selectors): from the interval, not from anything else
    bars = [c for c in ax.containers if c.get_label() == "_ToSA (alternate, untrained selectors)"]
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()
    spans = sorted((round(s[0][1], 9), round(s[1][1], 9)) for s in segments)
    assert spans == [(1.02, 1.2), (1.15, 1.25)]
    # the noisy point (keep 0.7) is drawn hollow, the precise one filled
    hollow = [ln for ln in ax.get_lines() if ln.get_label() == "_noisy ToSA (alternate, untrained selectors)"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [0.7] and hollow[0].get_markerfacecolor() == "white"


def test_tokens_per_block_figure_draws_the_record_counts(run):
    data = F.plot_data([run])
    fig = F._draw(lambda: F.tokens_per_block(data, 0.5)).figure
    heights = {}
    for container in fig.axes[0].containers:
        heights[container.get_label()] = [p.get_height() for p in container.patches]
    assert heights["ToSA (alternate, untrained selectors)"] == ALT
    assert heights["ToSA (second-half, untrained selectors)"] == HALF
    assert heights["EViT"] == [197] * 12  # attention tokens, not those handed on


def test_placements_figure_needs_two_placements(tmp_path, run):
    data = F.plot_data([run])
    fig = F._draw(lambda: F.placements(data, 0.5)).figure
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == [1.20, 1.18]  # speed-ups of the two ToSA placements at keep 0.5
    one = F.plot_data([_write_run(tmp_path / "one", [r for r in _records() if r["placement_label"] != "second-half"])])
    with pytest.raises(F.Skip, match="one placement"):
        F.placements(one, 0.5)


def test_random_weight_accuracy_is_not_plotted(tmp_path):
    recs = _records()
    for r in recs:
        r["weights"] = "random"
    data = F.plot_data([_write_run(tmp_path / "rw", recs)])
    with pytest.raises(F.Skip, match="random weights"):
        F.tradeoff(data, "gmacs", "top1")


# ------------------------------------------------------------------------- files
def _is_pdf(path):
    data = path.read_bytes()
    return data.startswith(b"%PDF-") and len(data) > 2000 and data.rstrip().endswith(b"%%EOF")


def test_plot_writes_valid_files_with_conditions(run, tmp_path):
    out = tmp_path / "figs"
    report = F.plot_runs([run], out, formats=("pdf", "png", "svg"))
    stems = {p.stem for p in report.written}
    assert stems == {"tradeoff-top1-vs-gmacs", "tradeoff-top1-vs-throughput", "speedup-vs-keep",
                     "tokens-per-block-keep0.5", "placements-keep0.5", "peak-memory-vs-keep"}
    assert report.skipped == []
    for p in report.written:
        if p.suffix == ".pdf":
            assert _is_pdf(p), p
            assert b"torch 2.14.1+test" in p.read_bytes()  # the caption in the PDF's Subject
        elif p.suffix == ".png":
            with Image.open(p) as im:
                assert im.size[0] > 500 and im.size[1] > 300
                assert "cpu (Test CPU), fp32, batch 8, torch 2.14.1+test, eager, 2 threads" in im.info["Description"]
                assert np.asarray(im.convert("L")).std() > 10  # not blank
        else:
            assert "torch 2.14.1+test" in p.read_text()
    assert not list(out.glob(".*.tmp"))


def test_method_colours_are_the_same_in_every_figure(run):
    data = F.plot_data([run])
    builders = [lambda: F.tradeoff(data, "gmacs", "top1"), lambda: F.tradeoff(data, "throughput", "top1"),
                lambda: F.speedup_vs_keep(data), lambda: F.tokens_per_block(data, 0.5), lambda: F.memory_vs_keep(data)]
    from matplotlib.colors import to_hex

    seen = {}

    def note(label, colour):
        label = label.removeprefix("_ideal ").removeprefix("_noisy ").removeprefix("_")
        for name in ("tosa", "tome", "evit"):
            if label.startswith(registry.get(name).display + " ") or label == registry.get(name).display:
                seen.setdefault(name, set()).add(to_hex(colour))

    for build in builders:
        fig = F._draw(build).figure
        (legend,) = fig.legends
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            note(text.get_text(), handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor())
        for ax in fig.axes:  # every drawn line and bar, not only the legend's
            for ln in ax.get_lines():
                note(ln.get_label(), ln.get_color())
            for container in ax.containers:
                for patch in getattr(container, "patches", []):
                    note(container.get_label(), patch.get_facecolor())
    assert seen == {name: {registry.get(name).colour.lower()} for name in ("tosa", "tome", "evit")}
    assert len({registry.get(n).colour for n in registry.names()}) == len(registry.names())  # all distinct


def test_unknown_method_gets_a_stable_palette_colour():
    a, b = F.method_style("plugin_x"), F.method_style("plugin_x")
    assert a == b and a.colour in F.PALETTE and a.label == "plugin_x"


def test_cli_names_skipped_figures(tmp_path):
    run = _write_run(tmp_path / "noacc", _records(with_accuracy=False))
    res = runner.invoke(app, ["plot", str(run), "--format", "png"])
    assert res.exit_code == 0, res.output
    assert "skipped tradeoff-top1-vs-gmacs: no top1 in the run" in res.output
    assert (run / "figures" / "speedup-vs-keep.png").is_file()
    assert not (run / "figures" / "tradeoff-top1-vs-gmacs.png").exists()
    res = runner.invoke(app, ["report", str(run)])
    assert "figures (png) in" in res.output and "speedup-vs-keep" in res.output


@pytest.mark.parametrize("args,needle", [
    (["--x", "flops"], "--x: expected some of gmacs"),
    (["--format", "gif"], "--format: expected some of pdf, png, svg"),
    (["--keep", "0.6"], "--keep 0.6: the run has keeps 0.5, 0.7"),
])
def test_cli_bad_options_are_one_line(run, args, needle):
    res = runner.invoke(app, ["plot", str(run), *args])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output


def test_cli_several_runs_need_out_and_overlay(run, tmp_path):
    other = _write_run(tmp_path / "other", _records())
    res = runner.invoke(app, ["plot", str(run), str(other)])
    assert res.exit_code == 2 and "--out" in res.output
    res = runner.invoke(app, ["plot", str(run), str(other), "--out", str(tmp_path / "both"), "--format", "png"])
    assert res.exit_code == 0, res.output
    data = F.plot_data([run, other])
    fig = F._draw(lambda: F.tradeoff(data, "gmacs", "top1")).figure
    a, b = _line(fig, "ToMe [run]"), _line(fig, "ToMe [other]")
    assert a.get_color() == b.get_color() and a.get_linestyle() != b.get_linestyle()


# ------------------------------------------------------------------------- training curves
def test_training_curves(tmp_path):
    rows = [{"epoch": e, "loss": 1.0 / e, "val_loss": 1.2 / e, "recall@0.5": 0.5 + 0.1 * e, "chance@0.5": 0.5} for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 4, "lo')
    report = F.plot_training(tmp_path, formats=("png",))
    (png,) = report.written
    fig = F._draw(lambda: F.training_curves(F.read_metrics(tmp_path))).figure
    assert list(_line(fig, "loss").get_ydata()) == pytest.approx([1.0, 0.5, 1 / 3])  # torn 4th line skipped
    assert list(_line(fig, "top-k recall @ keep 0.5").get_ydata()) == pytest.approx([60.0, 70.0, 80.0])
    assert list(_line(fig, "chance @ keep 0.5").get_ydata()) == pytest.approx([50.0] * 3)
    with Image.open(png) as im:
        assert im.size[0] > 500
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "loss": 1}\nnot json\n{"epoch": 2, "loss": 0.5}\n')
    res = runner.invoke(app, ["plot", str(tmp_path)])
    assert res.exit_code == 2 and "line 2 is not JSON" in res.output


# ------------------------------------------------------------------------- token pictures
def test_block_masks_by_kind():
    n = 17  # 16 patches + CLS
    sel = {
        1: ("ran", np.array([[0, 1, 5, 16]])),
        2: ("kept", np.array([[0, 2, 3, 17]])),  # 17 = EViT's fused token, not a patch
        4: ("merged", np.array([[0, 1, 1, 2, 3, 3, 3] + list(range(4, 14))])),
    }
    masks = block_masks(sel, depth=5, num_tokens=n, image=0)
    assert masks[0][1].sum() == 16 and masks[0][0] == "block 0: all 16"
    ran = masks[1][1]
    assert ran.nonzero()[0].tolist() == [0, 4, 15] and masks[1][0] == "block 1: 3 ran"
    kept = masks[2][1]
    assert kept.nonzero()[0].tolist() == [1, 2]
    assert masks[3][1].nonzero()[0].tolist() == [1, 2] and masks[3][0] == "block 3: 2 kept"  # EViT: stays pruned
    merged = masks[4][1]
    assert merged[0] == merged[1] >= 2 and merged[3] == merged[4] == merged[5] >= 2 and merged[0] != merged[3]
    assert merged[2] == 1 and (merged[6:] == 1).all()


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "picture.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path, quality=90)
    return path


@pytest.mark.parametrize("variant", ["tosa", "random", "evit", "tome"])
def test_show_tokens_end_to_end(jpeg, tmp_path, variant):
    res = runner.invoke(app, ["show-tokens", str(jpeg), "--model", "test_tiny", "--variant", variant, "--keep", "0.5",
                              "--out", str(tmp_path), "--format", "png,pdf"])
    assert res.exit_code == 0, res.output
    png = tmp_path / f"tokens-picture-{variant}.png"
    with Image.open(png) as im:
        assert im.size[0] > 400
    assert _is_pdf(tmp_path / f"tokens-picture-{variant}.pdf")


def test_show_tokens_masks_match_the_model(jpeg):
    from tosa_bench import build_model
    from tosa_bench.results.tokens import _load_image, selections

    model = build_model("test_tiny", "tosa", keep=0.5)
    _, tensor = _load_image(jpeg, 32)
    sel = selections(model, tensor.unsqueeze(0))
    masks = block_masks(sel, 6, 17, 0)
    k = math.ceil(0.5 * 16)
    for b, (_, label) in enumerate(masks):
        expected = k if b in sel else 16
        assert label.sum() == expected, b
    ran = sel[1][1][0]
    assert sorted((ran[ran > 0] - 1).tolist()) == masks[1][1].nonzero()[0].tolist()


def test_show_tokens_refuses_dense_and_bad_image(jpeg, tmp_path):
    res = runner.invoke(app, ["show-tokens", str(jpeg), "--model", "test_tiny", "--variant", "dense", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "dense runs every block on every token" in res.output
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    res = runner.invoke(app, ["show-tokens", str(bad), "--model", "test_tiny", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not a readable image" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------- a real sweep
def test_sweep_writes_its_figures(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["sweep", "--model", "test_tiny", "-b", "1", "--warmup", "1", "--repeats", "2", "--time-budget", "0.05",
                              "--no-latency", "--no-memory", "--device", "cpu", "--variant", "dense", "--variant", "tosa",
                              "--keep", "0.5", "--keep", "0.7", "--out", str(out)])
    assert res.exit_code == 0, res.output
    figs = out / "figures"
    assert (figs / "speedup-vs-keep.pdf").is_file() and (figs / "tokens-per-block-keep0.5.png").is_file()
    assert "skipped tradeoff-top1-vs-gmacs" in res.output and "skipped peak-memory-vs-keep" in res.output
    assert _is_pdf(figs / "speedup-vs-keep.pdf")
    torch.manual_seed(0)  # nothing above may depend on global RNG state; keep later tests independent


# ----------------------------------------------------------------------------- energy
COUNTER = "nvml total energy counter (mJ), device sync around >=1 s windows"
#: variant (keep, placement) -> (J per image, energy ratio, its interval)
ENERGY = {("dense", None): (0.40, None, None), ("tosa", 0.5, "alternate"): (0.34, 0.85, (0.80, 0.90)),
          ("tosa", 0.7, "alternate"): (0.37, 0.92, (0.88, 0.97)), ("tosa", 0.5, "second-half"): (0.35, 0.87, (0.83, 0.91)),
          ("tome", 0.5, "alternate"): (0.30, 0.75, (0.70, 0.79)), ("evit", 0.5, "alternate"): (0.26, 0.65, (0.61, 0.70))}


def _with_energy(records):
    out = []
    for r in records:
        key = ("dense", None) if r["variant"] == "dense" else (r["variant"], r["keep"], r["options"].get("placement", "alternate"))
        j, ratio, ci = ENERGY[key]
        out.append({**r, "energy_j_per_img": j, "energy_ratio": ratio, "energy_ratio_ci_low": ci[0] if ci else None,
                    "energy_ratio_ci_high": ci[1] if ci else None, "energy_method": COUNTER})
    return out


def test_energy_figures_show_the_records_values(tmp_path):
    run = _write_run(tmp_path / "erun", _with_energy(_records()))
    data = F.plot_data([run])
    ax = F._draw(lambda: F.tradeoff(data, "energy", "top1")).figure.axes[0]
    assert ax.get_xlabel() == "energy per image (J)"
    evit = [ln for ln in ax.get_lines() if ln.get_label() == "EViT"]
    assert len(evit) == 1 and list(evit[0].get_xdata()) == [0.26] and list(evit[0].get_ydata()) == [76.0]
    drawn = F._draw(lambda: F.speedup_energy_vs_keep(data))
    left, right = drawn.figure.axes
    assert left.get_ylabel() == "speed-up over dense (×)" and right.get_ylabel() == "energy per image / dense's (×)"
    bars = [c for c in right.containers if c.get_label() == "_ToSA (alternate, untrained selectors)"]
    spans = sorted((round(s[0][1], 9), round(s[1][1], 9)) for s in bars[0].lines[2][0].get_segments())
    assert spans == [(0.8, 0.9), (0.88, 0.97)]  # the energy ratio's own 95% intervals
    assert COUNTER in drawn.caption
    stems = {p.stem for p in F.plot_runs([run], tmp_path / "figs", formats=("png",)).written}
    assert {"tradeoff-top1-vs-energy", "speedup-energy-vs-keep", "speedup-vs-keep"} <= stems


def test_without_energy_there_is_no_energy_figure(run, tmp_path):
    data = F.plot_data([run])
    with pytest.raises(F.Skip, match="no energy ratio in the run"):
        F._draw(lambda: F.speedup_energy_vs_keep(data))
    with pytest.raises(F.Skip, match="no energy in the run"):
        F._draw(lambda: F.tradeoff(data, "energy", "top1"))


def test_batch_sizes_and_compile_modes_are_separate_curves(tmp_path):
    """One run with two batch sizes and eager + compiled points: each (batch, mode) is a
    curve of its own (a line never joins batch 8 to batch 32), told apart in the legend."""
    records = []
    for batch, mode, speedup in ((8, False, 1.2), (32, False, 1.3), (8, "default", 0.9), (32, "default", 1.0)):
        for r in (_record("dense", None, gmacs=DENSE_GMACS), _record("evit", 0.5, gmacs=2.0, speedup=speedup, ci=(speedup - 0.05, speedup + 0.05))):
            r.update(batch_size=batch, compile=mode, config_hash=f"{r['config_hash']}-{batch}-{mode}")
            records.append(r)
    data = F.plot_data([_write_run(tmp_path / "run", records)])
    fig = F._draw(lambda: F.speedup_vs_keep(data)).figure
    labels = {ln.get_label(): list(ln.get_ydata()) for ln in fig.axes[0].get_lines() if ln.get_label().startswith("EViT")}
    assert labels == {"EViT (eager, batch 8)": [], "EViT (eager, batch 32)": [],
                      "EViT (compiled default, batch 8)": [], "EViT (compiled default, batch 32)": []}
    for label, speedup in (("eager, batch 8", 1.2), ("eager, batch 32", 1.3), ("compiled default, batch 8", 0.9), ("compiled default, batch 32", 1.0)):
        drawn = {float(y) for ln in fig.axes[0].get_lines() if ln.get_label() == f"_EViT ({label})" for y in ln.get_ydata()}
        assert drawn == {speedup}, label  # one point per curve: that record's speed-up alone
