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
        assert any(k.startswith("selector") for k in r["cpu_chunks"])
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert len(rows) == 4 and {r["efficiency"] for r in rows} == {r["speedup_efficiency"] for r in tosa}
    assert "| 2 | fp32 | mean |" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert grid.main(args) == 0  # a rerun keeps what is measured
    assert capsys.readouterr().err.count("kept:") == 4
    assert len(read_records(out / "records.jsonl").records) == len(records)
