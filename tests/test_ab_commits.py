"""benchmarks/ab_commits.py: an earlier commit's package against this checkout's, paired
in one process (here the checkout against its own HEAD, on the tiny test model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ab_commits.py"


def _has_history() -> bool:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", "HEAD^{commit}"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _has_history(), reason="needs the repository's git history (git archive of a commit)")


def test_head_against_this_checkout_runs_paired_and_writes_its_summary(tmp_path):
    out = tmp_path / "ab"
    done = subprocess.run([sys.executable, str(SCRIPT), "--base", "HEAD", "--model", "test_deep", "--variants", "tosa,dense",
                           "--batch-sizes", "2", "--rounds", "3", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["variant"], r["batch"], r["rounds"]) for r in summary["rows"]] == [("tosa", 2, 3), ("dense", 2, 3)]
    assert all(0 < r["low"] <= r["ratio"] <= r["high"] for r in summary["rows"])
    assert len(summary["base"]) == 40 and "| tosa | 2 |" in (out / "summary.md").read_text() and (out / "env.json").exists()


@pytest.mark.parametrize("args,message", [(["--base", "no-such-commit-xyz"], "--base: 'no-such-commit-xyz' is not a commit"),
                                          (["--base", "HEAD", "--variants", "tosa,vit"], "--variants: unknown vit")])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().startswith(f"error: {message}") and "Traceback" not in done.stderr
