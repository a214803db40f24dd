"""The A/A check on a small model: controls that compute what dense computes (dense
against itself, ToSA and random at keep 1.0) read 1.00 within their noise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _aa_main():
    spec = importlib.util.spec_from_file_location("aa_check", ROOT / "benchmarks" / "aa_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_controls_read_one(tmp_path):
    suite = tmp_path / "aa.toml"
    suite.write_text("[measure]\nwarmup = 2\nrepeats = 16\ntime_budget_s = 0.25\npair_min_rounds = 16\n")
    out = tmp_path / "aa"
    code = _aa_main()(["--model", "test_deep", "--batch-size", "8", "--repeats", "1", "--suite", str(suite), "--out", str(out),
                       "--tolerance", "0.10"])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["speedups"]) == {"dense", "tosa", "random"} and all(len(v) == 1 for v in summary["speedups"].values())
    for name, values in summary["speedups"].items():
        for s, (lo, hi) in zip(values, summary["intervals95"][name]):
            # 1.00 lies inside the 95% interval, give or take 5% (ms-long steps of a tiny model)
            assert 0.95 * lo <= 1.0 <= 1.05 * hi, (name, s, lo, hi)
    assert code == (0 if summary["passed"] else 1)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and {r["aa_repeat"] for r in records} == {1}
    dense = next(r for r in records if r["variant"] == "dense")
    assert dense["speedup_paired"] is not None and dense["pair_rounds"] >= 16  # dense was paired with its twin


def test_compiled_controls_read_one(tmp_path):
    """--compile default: every control and its dense twin compiled the same way; the
    records name the mode and the controls still read 1.00 within their interval."""
    suite = tmp_path / "aa.toml"
    suite.write_text("[measure]\nwarmup = 2\nrepeats = 16\ntime_budget_s = 0.25\npair_min_rounds = 16\n")
    out = tmp_path / "aa"
    code = _aa_main()(["--model", "test_deep", "--batch-size", "8", "--repeats", "1", "--suite", str(suite), "--out", str(out),
                       "--tolerance", "0.10", "--compile", "default"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] == "default" and code in (0, 1)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["compile"] for r in records] == ["default"] * 3 and all(r["status"] == "ok" for r in records)
    assert all(r["compile_s"] > 0 and r["compile_s_dense"] > 0 for r in records)
    for name, values in summary["speedups"].items():
        for s, (lo, hi) in zip(values, summary["intervals95"][name]):
            assert 0.95 * lo <= 1.0 <= 1.05 * hi, (name, s, lo, hi)


def test_a_mode_that_is_not_one_is_refused_before_any_work(tmp_path, capsys):
    from tosa_bench.errors import run_script

    out = tmp_path / "aa"
    assert run_script(lambda: _aa_main()(["--model", "test_deep", "--compile", "fast", "--out", str(out)])) == 2
    assert "compile: expected eager or a torch.compile mode" in capsys.readouterr().err and not out.exists()
