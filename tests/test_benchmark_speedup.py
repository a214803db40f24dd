"""benchmarks/tosa_speedup.py measures through measure_point and writes a run directory
that the report reads (tiny model, two rounds of one step)."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tosa_bench.cli import app
from tosa_bench.results import load_run
from tosa_bench.results.store import read_records
from tosa_bench.results.tables import render

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "tosa_speedup.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("tosa_speedup_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_writes_a_reportable_run(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "speedup"
    args = ["--model", "test_tiny", "--batch-size", "2", "--rounds", "2", "--steps", "1", "--warmup", "0", "--out", str(out)]
    rc = bench.main([*args, "--target", "0"])
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert rc == 0
    assert printed.err.count("dense/tosa step-time ratio") == 2

    records = read_records(out / "records.jsonl")
    assert not records.bad_lines and not records.torn_tail
    dense, tosa = records.records
    assert [r["variant"] for r in (dense, tosa)] == ["dense", "tosa"]
    assert all(r["status"] == "ok" and len(r["config_hash"]) == 16 for r in (dense, tosa))
    assert tosa["options"] == {"importance": "mean", "keep": 0.5, "placement": "alternate"}
    assert tosa["grid_keeps"] == [0.5] and tosa["settings"]["pair_steps"] == 1
    # the headline numbers are the sweep's own record fields
    assert len(tosa["speedup_paired_rounds"]) == tosa["pair_rounds"] == 2
    assert tosa["speedup_paired"] == pytest.approx(statistics.median(tosa["speedup_paired_rounds"]))
    assert tosa["speedup_efficiency"] == pytest.approx(tosa["speedup_paired"] / tosa["speedup_ideal"])
    assert summary["speedup_measured"] == tosa["speedup_paired"]
    assert summary["efficiency"] == tosa["speedup_efficiency"]
    assert summary["config_hash"] == tosa["config_hash"]
    assert json.loads((out / "summary.json").read_text())["efficiency"] == summary["efficiency"]
    assert (out / "env.json").is_file()

    run = load_run(out)
    assert [r["variant"] for r in run.records] == ["dense", "tosa"]
    table = render(run, "md")
    assert "ToSA" in table and "Dense" in table
    result = CliRunner().invoke(app, ["report", str(out), "--format", "md"])
    assert result.exit_code == 0, result.output
    assert "ToSA" in result.output

    # a rerun replaces the result; an unreachable target is exit code 1
    assert bench.main([*args, "--target", "1e9"]) == 1
    assert len(read_records(out / "records.jsonl").records) == 2


@pytest.fixture(scope="module")
def grid():
    spec = importlib.util.spec_from_file_location("tosa_speedup_grid_benchmark", BENCHMARK.with_name("tosa_speedup_grid.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_measures_each_combination_once_and_resumes(grid, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grid"
    args = ["--model", "test_deep", "--batch-sizes", "1,2", "--importance", "mean,cls", "--rounds", "2", "--steps", "1", "--warmup", "0", "--out", str(out)]
    assert grid.main(args) == 0
    records = read_records(out / "records.jsonl").records
    tosa = [r for r in records if r["variant"] == "tosa"]
    assert sorted((r["batch_size"], r["options"]["importance"]) for r in tosa) == [(1, "cls"), (1, "mean"), (2, "cls"), (2, "mean")]
    for r in tosa:
        assert 0 < r["time_share_selectors"] < 1
        assert r["mac_share_selectors"] == pytest.approx((r["gmacs_selectors"] + r["gmacs_method_outside_blocks"]) / r["gmacs"])
        assert r["selector_time_over_mac_share"] == pytest.approx(r["time_share_selectors"] / r["mac_share_selectors"])
        passes = r["time_share_selectors_per_pass"]
        assert r["time_share_selectors_passes"] == len(passes) == grid.SHARE_PASSES
        assert r["time_share_selectors"] == statistics.median(passes)
        assert (r["time_share_selectors_ci_low"], r["time_share_selectors_ci_high"]) == tuple(sorted(passes)[1:8:6])
        assert any(k.startswith("selector") for k in r["cpu_chunks"])
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert len(rows) == 4 and {r["efficiency"] for r in rows} == {r["speedup_efficiency"] for r in tosa}
    for row in rows:
        r = next(t for t in tosa if t["config_hash"] == row["config_hash"])
        assert row["selector_time_over_mac_share_ci95"] == [r["time_share_selectors_ci_low"] / r["mac_share_selectors"],
                                                            r["time_share_selectors_ci_high"] / r["mac_share_selectors"]]
    table = (out / "summary.md").read_text()
    assert "| 2 | fp32 | mean |" in table and "median over 9 forwards with hooks" in table
    capsys.readouterr()
    assert grid.main(args) == 0  # a rerun keeps what is measured
    assert capsys.readouterr().err.count("kept:") == 4
    assert len(read_records(out / "records.jsonl").records) == len(records)


RESULTS = BENCHMARK.parents[1] / "results"
GRID_RUNS = sorted(p.parent.name for p in RESULTS.glob("tosa-speedup-*/summary.json") if "rows" in json.loads(p.read_text()))


@pytest.mark.parametrize("run", GRID_RUNS)
def test_committed_grid_tables_are_their_records(grid, run: str) -> None:
    """Every row of a committed speed-up grid (summary.json, summary.md) is recomputed from
    its records: the speed-up is the median of its paired rounds and its interval two of
    them, the ideal the closed-form GMACs ratio, the share of ideal their quotient, the
    selectors' MAC share from the counted GMACs; summary.md is what the benchmark renders
    from those rows. A table edited by hand, or a record missing behind it, fails here."""
    folder = RESULTS / run
    records = read_records(folder / "records.jsonl").records
    rows = json.loads((folder / "summary.json").read_text())["rows"]
    env = json.loads((folder / "env.json").read_text())
    assert rows
    by_hash = {r["config_hash"]: r for r in records}
    for row in rows:
        tosa = by_hash[row["config_hash"]]
        assert tosa["variant"] == "tosa" and tosa["status"] == row["status"] == "ok"
        rounds = tosa["speedup_paired_rounds"]
        assert len(rounds) == row["rounds"] == tosa["pair_rounds"]
        assert row["speedup_measured"] == statistics.median(rounds)
        assert row["speedup_ci95_low"] in rounds and row["speedup_ci95_high"] in rounds
        assert row["speedup_ci95_low"] <= row["speedup_measured"] <= row["speedup_ci95_high"]
        halfwidth = (row["speedup_ci95_high"] - row["speedup_ci95_low"]) / (2 * row["speedup_measured"])
        assert row["noisy"] == (halfwidth > 0.05 or tosa["speedup_paired_ci_coverage"] < 0.95)
        assert row["speedup_ideal"] == pytest.approx(tosa["gmacs_dense_analytic"] / tosa["gmacs_analytic"], rel=1e-12)
        assert row["efficiency"] == pytest.approx(row["speedup_measured"] / row["speedup_ideal"], rel=1e-12)
        if row["mac_share_selectors"] is not None:
            macs = (tosa["gmacs_selectors"] + tosa["gmacs_method_outside_blocks"]) / tosa["gmacs"]
            assert row["mac_share_selectors"] == pytest.approx(macs, rel=1e-12)
            assert row["selector_time_over_mac_share"] == pytest.approx(row["time_share_selectors"] / macs, rel=1e-12)
        if row.get("selector_time_over_mac_share_ci95"):  # runs since the share has an interval
            passes = sorted(tosa["time_share_selectors_per_pass"])
            assert row["time_share_selectors"] == statistics.median(passes)
            assert (tosa["time_share_selectors_ci_low"], tosa["time_share_selectors_ci_high"]) == (passes[1], passes[-2])
            assert row["selector_time_over_mac_share_ci95"] == pytest.approx(
                [tosa["time_share_selectors_ci_low"] / macs, tosa["time_share_selectors_ci_high"] / macs], rel=1e-12)
        dense = [r for r in records if r["variant"] == "dense" and (r["batch_size"], r["dtype"], r["model"]) == (row["batch_size"], row["dtype"], row["model"])]
        assert dense and all(d["gmacs"] == tosa["gmacs_dense_analytic"] or d["gmacs_analytic"] == tosa["gmacs_dense_analytic"] for d in dense)
    steps = {by_hash[row["config_hash"]]["pair_steps"] for row in rows}
    assert len(steps) == 1
    assert (folder / "summary.md").read_text() == grid.render_table(rows, env, steps.pop())
