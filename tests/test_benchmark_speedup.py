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
