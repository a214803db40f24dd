"""`tosa-bench demo --quick`: the whole experiment (data, classifier, selectors, depth
head, both sweeps with top-1, object share, depth and speed-up, the summary over seeds,
figures, token pictures) runs, and every piece lands where the next one reads it."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from tosa_bench.cli import app
from tosa_bench.experiments.demo import MODEL, PLACEMENT
from tosa_bench.methods import registry
from tosa_bench.methods.base import kept_count
from tosa_bench.models.configs import get_config
from tosa_bench.models.selector_file import read_selector_metadata
from tosa_bench.results import load_run

runner = CliRunner()


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--quick", "--train-images", "200", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    run = load_run(out / "seed-0" / "sweep")
    # dense + 4 methods x 3 keeps, ToMe's r standing for two keeps in one point where they map alike
    assert all(r["status"] == "ok" for r in run.records), [r.get("error") for r in run.records]
    assert sorted(sum((r["grid_keeps"] for r in run.records), [])) == [0.25] * 4 + [0.5] * 4 + [0.75] * 4
    assert all(r["top1"] is not None and r["weights"] == "checkpoint" for r in run.records)
    assert all(r["delta1"] is not None and r["absrel"] is not None for r in run.records)
    patches = get_config(MODEL).num_tokens - 1
    for r in run.records:
        method = registry.get(r["variant"])
        if registry.is_dense(r["variant"]) or r["variant"] == "tome":  # nothing chosen: no share
            assert r["object_share"] is None, r["variant"]
            continue
        assert set(r["object_share"]) and 0.0 <= r["object_share_mean"] <= 1.0
        if method.control:  # the random control chooses k of the patches in every block it runs
            chance = kept_count(r["options"]["keep"], patches) / patches
            assert all(math.isclose(c, chance) for c in r["object_chance"].values())
    assert all(r["speedup_paired"] is not None for r in run.records if not registry.is_dense(r["variant"]))
    tosa = [r for r in run.records if r["variant"] == "tosa"]
    assert tosa and all(r["selector"] == str(out / "seed-0" / "selector" / "selectors.safetensors") for r in tosa)
    untrained = load_run(out / "seed-0" / "sweep-untrained").records
    assert len(untrained) == 3 and all(r["selector"] is None and r["top1"] is not None and r["object_share"] for r in untrained)
    meta = read_selector_metadata(out / "seed-0" / "selector" / "selectors.safetensors")
    every_block_but_first = list(range(1, get_config(MODEL).depth))
    assert meta["model"] == MODEL and meta["placement"] == ",".join(map(str, every_block_but_first))
    # ToSA (both sweeps) and the random control choose in the same blocks the selectors were trained for
    choosers = [r for r in run.records + untrained if r["variant"] in ("tosa", "random")]
    assert len(choosers) == 9 and all(r["resolved_options"]["placement"] == every_block_but_first for r in choosers)
    demo_record = json.loads((out / "demo.json").read_text())
    assert demo_record["placement"] == PLACEMENT and demo_record["seed_wall_s"]["0"] > 0
    assert demo_record["wall_s"] >= demo_record["seed_wall_s"]["0"]
    # how many choosing blocks each rooms patch ran: shares over 0..K, and the mean every such choice has
    coverage = json.loads((out / "seed-0" / "coverage.json").read_text())
    assert set(coverage) == {"tosa", "random"}
    for c in coverage.values():
        k, blocks = kept_count(0.5, 48), len(every_block_but_first)  # rooms at 48 x 64 px: 6 x 8 = 48 patches
        assert c["images"] > 0 and c["keep"] == 0.5
        assert c["choosing_blocks"] == every_block_but_first and len(c["blocks_run_share"]) == blocks + 1
        assert math.isclose(sum(c["blocks_run_share"]), 1.0) and math.isclose(c["blocks_run_mean"], blocks * k / 48)
    summary = json.loads((out / "summary" / "summary.json").read_text())
    assert summary["seeds"] == 1 and len(summary["records"]) == len(run.records) + 3  # + the untrained ToSA points
    assert "recall@0.5" in summary["selector_recall"]
    table = (out / "summary" / "table.md").read_text()
    assert "object tokens per block" in table and "top-k recall" in table and "How many blocks each patch ran" in table
    assert "No method is fine-tuned" in table
    assert set(summary["blocks_run"]) == {"tosa", "random"}
    figures = {p.name for p in (out / "summary" / "figures").iterdir()}
    assert {"tradeoff-top1-vs-gmacs.png", "tradeoff-delta1-vs-gmacs.png", "object-share-vs-keep.png", "speedup-vs-keep.png"} <= figures
    assert json.loads((out / "summary" / "env.json").read_text())["device"] == "cpu"
    assert len(list((out / "tokens").glob("*.png"))) == 6
    assert "at keep 0.5" in res.output and "ToSA (untrained)" in res.output
    res = runner.invoke(app, ["demo", "--quick", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 2 and "not empty" in res.output


def test_committed_demo_summary_is_its_seed_runs():
    """results/demo-cpu-2core/summary is the aggregate of the committed seed runs: every
    number in the README's demo figure traces back to a sweep record."""
    from pathlib import Path

    from tosa_bench.results.aggregate import aggregate_records

    root = Path(__file__).resolve().parents[1] / "results" / "demo-cpu-2core"
    summary = json.loads((root / "summary" / "summary.json").read_text())
    seeds = sorted(root.glob("seed-*"))
    assert summary["seeds"] == len(seeds) >= 1
    per_seed = [load_run(s / "sweep").records + load_run(s / "sweep-untrained").records for s in seeds]
    again = json.loads(json.dumps(aggregate_records(per_seed), default=str))
    fields = ("variant", "options", "selector", "top1", "delta1", "absrel", "speedup_paired", "object_share", "object_share_mean", "gmacs")
    assert [{k: r.get(k) for k in fields} for r in again] == [{k: r.get(k) for k in fields} for r in summary["records"]]
    from tosa_bench.experiments.demo import COVERAGE_FILE, coverage_summary

    coverage = coverage_summary([json.loads((s / COVERAGE_FILE).read_text()) for s in seeds])
    assert json.loads(json.dumps(coverage)) == summary["blocks_run"]
