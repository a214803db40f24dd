"""Seeds read as one (results/aggregate.py): mean, sample standard deviation and n of
hand-made runs, the ``mean ± sd (n)`` cells of the tables, and the error-bar spans of
the figures, each against values worked out by hand."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from tosa_bench.cli import app
from tosa_bench.errors import OptionError
from tosa_bench.results import figures as F
from tosa_bench.results import load_run
from tosa_bench.results.aggregate import aggregate_records, aggregate_runs, spread
from tosa_bench.results.store import RunStore
from tosa_bench.results.tables import frame, to_markdown

runner = CliRunner()
ENV = {"device": "cpu", "device_name": "Test CPU", "torch": "2.14.1+test"}


def _rec(variant, top1, *, keep=None, seed_dir="seed-0", speedup=None, share=None, gmacs=4.0):
    options = {} if variant == "dense" else {"keep": keep, "placement": "alternate"}
    return {
        "config_hash": f"{variant}-{keep}", "status": "ok", "error": None, "model": "test_tiny", "variant": variant,
        "options": options, "resolved_options": options, "batch_size": 8, "dtype": "fp32", "device": "cpu", "img_size": 32,
        "grid_keeps": [keep] if keep is not None else [], "placement_label": "alternate" if keep else None,
        "checkpoint": f"/x/{seed_dir}/classifier/checkpoint.safetensors", "selector": None, "params": 100_000,
        "gmacs": gmacs, "throughput_img_s": 100.0, "speedup_paired": speedup,
        "speedup_paired_ci_low": None if speedup is None else speedup - 0.01,
        "speedup_paired_ci_high": None if speedup is None else speedup + 0.01, "speedup_paired_noisy": False,
        "top1": top1, "weights": "checkpoint", "n_images": 100, "settings": {"noise_threshold": 0.05},
        "object_share": share, "object_share_mean": None if share is None else sum(share.values()) / len(share),
        "object_chance": None if share is None else {b: 0.5 for b in share},
        "object_chance_mean": None if share is None else 0.5,
    }


# three seeds: dense 80, 82, 87 (mean 83, sd sqrt(13)); random at keep 0.5 70, 71, 75
SEEDS = [
    [_rec("dense", 80.0, seed_dir="seed-0"), _rec("random", 70.0, keep=0.5, seed_dir="seed-0", speedup=1.10, share={"1": 0.4, "3": 0.6})],
    [_rec("dense", 82.0, seed_dir="seed-1"), _rec("random", 71.0, keep=0.5, seed_dir="seed-1", speedup=1.20, share={"1": 0.5, "3": 0.5})],
    [_rec("dense", 87.0, seed_dir="seed-2"), _rec("random", 75.0, keep=0.5, seed_dir="seed-2", speedup=1.30, share={"1": 0.6, "3": 0.7})],
]


def _write(path, records):
    store = RunStore.create(path)
    store.write_json("env.json", ENV)
    store.open_for_append()
    for r in records:
        store.append(r)
    return path


@pytest.fixture()
def runs(tmp_path):
    return [_write(tmp_path / f"seed-{i}" / "sweep", recs) for i, recs in enumerate(SEEDS)]


def test_spread_by_hand():
    s = spread([80.0, 82.0, 87.0])
    assert s["mean"] == 83.0 and s["sd"] == pytest.approx(math.sqrt(13.0)) and (s["min"], s["max"], s["n"]) == (80.0, 87.0, 3)
    assert spread([5.0])["sd"] == 0.0


def test_records_of_one_configuration_are_averaged():
    dense, rnd = aggregate_records(SEEDS)
    assert dense["variant"] == "dense" and dense["top1"] == 83.0 and dense["top1_sd"] == pytest.approx(math.sqrt(13.0))
    assert (dense["top1_n"], dense["top1_min"], dense["top1_max"], dense["aggregated_runs"]) == (3, 80.0, 87.0, 3)
    assert rnd["top1"] == pytest.approx(72.0) and rnd["top1_sd"] == pytest.approx(math.sqrt((4 + 1 + 9) / 2))
    assert rnd["speedup_paired"] == pytest.approx(1.2) and rnd["speedup_paired_sd"] == pytest.approx(0.1)
    assert "speedup_paired_ci_low" not in rnd  # one run's interval does not describe a mean over runs
    assert rnd["object_share"] == {"1": pytest.approx(0.5), "3": pytest.approx(0.6)}
    assert rnd["object_share_sd"]["1"] == pytest.approx(0.1)
    assert rnd["object_share_mean"] == pytest.approx((0.5 + 0.5 + 0.65) / 3)


def test_the_random_controls_seed_is_the_runs_seed_not_its_configuration():
    """The demo draws the control's tokens with the run's seed: seeds 0, 1, 2 of one
    configuration are one point of the aggregate, labelled with the seeds it holds; a
    different keep stays a point of its own."""
    from tosa_bench.results.tables import _setting

    def seeded(records, seed):
        return [dict(r, options={**r["options"], "seed": seed}, resolved_options={**r["options"], "seed": seed})
                if r["variant"] == "random" else r for r in records]

    other_keep = _rec("random", 60.0, keep=0.25, seed_dir="seed-2")
    dense, rnd, *rest = aggregate_records([seeded(SEEDS[0], 0), seeded(SEEDS[1], 1), seeded(SEEDS[2] + [other_keep], 2)])
    assert rnd["aggregated_runs"] == 3 and rnd["top1"] == pytest.approx(72.0) and rnd["options"]["seed"] == [0, 1, 2]
    assert _setting(rnd) == "keep 0.5 @ alternate, seeds 0, 1, 2"
    assert [r["top1"] for r in rest] == [60.0] and rest[0]["aggregated_runs"] == 1 and rest[0]["options"]["seed"] == 2
    assert _setting(rest[0]) == "keep 0.25 @ alternate, seed 2"


def test_a_point_missing_from_one_seed_has_a_smaller_n():
    seeds = [SEEDS[0], SEEDS[1][:1], SEEDS[2]]
    rnd = aggregate_records(seeds)[1]
    assert rnd["top1_n"] == 2 and rnd["top1"] == pytest.approx(72.5)


def test_table_cells_show_mean_sd_and_n(runs):
    agg = aggregate_runs([load_run(p) for p in runs])
    md = to_markdown(frame(agg.records), agg.env)
    assert "83.00 ± 3.61 (3)" in md and "72.00 ± 2.65 (3)" in md
    assert "1.20 ± 0.10 (3)" in md  # the speed-up: mean of the medians ± sd
    assert "mean ± sample standard deviation (n runs)" in md
    assert "55.0 ± " in md  # object share in percent: mean over seeds of (0.5, 0.5, 0.65)


def test_one_run_has_no_spread(runs):
    md = to_markdown(frame(load_run(runs[0]).records), ENV)
    assert "±" not in md and "80.00" in md


def test_runs_of_different_experiments_are_refused(runs, tmp_path):
    other = _write(tmp_path / "other", [dict(_rec("dense", 50.0), model="test_deep")])
    with pytest.raises(OptionError, match="not seeds of one experiment"):
        aggregate_runs([load_run(runs[0]), load_run(other)])


def _spread_segments(fig, name):
    for container in fig.axes[0].containers:
        if container.get_label() == f"_spread {name}":
            return [tuple(map(tuple, seg)) for seg in container.lines[2][0].get_segments()]
    raise AssertionError(f"no error bars for {name}")


def test_tradeoff_error_bars_span_one_sd(runs):
    data = F.plot_data(runs, aggregate=True)
    fig = F._draw(lambda: F.tradeoff(data, "gmacs", "top1")).figure
    sd = math.sqrt(13.0)
    (seg,) = _spread_segments(fig, "dense")
    assert seg[0] == pytest.approx((4.0, 83.0 - sd)) and seg[1] == pytest.approx((4.0, 83.0 + sd))
    (seg,) = _spread_segments(fig, "random")
    assert seg[1][1] - seg[0][1] == pytest.approx(2 * math.sqrt(7.0))
    assert "sample standard deviation" in F._draw(lambda: F.tradeoff(data, "gmacs", "top1")).caption


def test_object_share_figure_draws_share_and_chance(runs):
    data = F.plot_data(runs, aggregate=True)
    fig = F._draw(lambda: F.object_share_vs_keep(data)).figure
    (seg,) = _spread_segments(fig, "random")
    mean = 100 * (0.5 + 0.5 + 0.65) / 3
    assert (seg[0][1] + seg[1][1]) / 2 == pytest.approx(mean)
    chance = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("_chance")]
    assert chance and list(chance[0].get_ydata()) == pytest.approx([50.0])


def test_cli_report_and_plot_aggregate(runs, tmp_path):
    res = runner.invoke(app, ["report", *map(str, runs), "--format", "md"])
    assert res.exit_code == 0, res.output
    assert "83.00 ± 3.61 (3)" in res.output
    out = tmp_path / "figs"
    res = runner.invoke(app, ["plot", *map(str, runs), "--aggregate", "--out", str(out), "--format", "png"])
    assert res.exit_code == 0, res.output
    assert (out / "tradeoff-top1-vs-gmacs.png").is_file() and (out / "object-share-vs-keep.png").is_file()
