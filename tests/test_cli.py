"""The command line as a user meets it: outputs, one-line errors, fast --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tosa_bench.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str):
    return runner.invoke(app, list(args))


def test_help_does_not_import_torch():
    code = "import sys, tosa_bench.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_profile_json_has_the_promised_fields():
    r = run("profile", "--model", "test_deep", "--variant", "tosa", "--keep", "0.5", "--batch-size", "2", "--device", "cpu", "--time-budget", "0.2", "--warmup", "1", "--repeats", "3", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    for key in ("model", "variant", "keep", "params", "gmacs", "gflops", "tokens_per_block", "throughput_img_s", "latency_ms_p50", "peak_mem_mb", "device", "dtype", "batch_size", "env"):
        assert key in d, key
    assert d["keep"] == 0.5 and d["gflops"] == pytest.approx(2 * d["gmacs"])
    assert d["throughput_img_s"] > 0 and d["latency_ms_p50"] > 0
    assert d["tokens_per_block"][1] == [33, 33]
    assert d["env"]["torch"] and d["params_method"] > 0
    assert (d["peak_mem_mb"] or 0) > 0 or d["peak_mem_method"].startswith("unavailable"), d["peak_mem_method"]


def test_profile_no_timing_and_table():
    r = run("profile", "--model", "test_tiny", "--variant", "evit", "--keep", "0.5", "--evit-loc", "1,3", "--no-fuse", "--device", "cpu", "--no-timing")
    assert r.exit_code == 0, r.output
    assert "GMACs" in r.stdout and "not measured" in r.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["profile", "--model", "test_tiny", "--keep", "1.5", "--no-timing"], "keep must be in (0, 1]"),
        (["profile", "--model", "deit_huge", "--no-timing"], "unknown model"),
        (["profile", "--model", "test_tiny", "--placement", "0,2", "--no-timing"], "placement"),
        (["profile", "--model", "test_tiny", "--checkpoint", "/nonexistent.pth", "--no-timing"], "no such file"),
        (["profile", "--model", "test_tiny", "--device", "cuda", "--no-timing"], "no CUDA device"),
        (["profile", "--model", "test_tiny", "--dtype", "fp16", "--device", "cpu", "--no-timing"], "fp16"),
        (["eval", "--imagenet", "/nonexistent", "--model", "test_tiny"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    if "cuda" in args:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is visible here")
    r = run(*args)
    assert r.exit_code == 2
    assert message in r.output
    assert "Traceback" not in r.output


def test_data_make_then_eval_both_tasks(tmp_path):
    shapes, rooms = tmp_path / "shapes", tmp_path / "rooms"
    assert run("data", "make", "shapes", "--out", str(shapes), "--n", "12", "--size", "32").exit_code == 0
    assert run("data", "make", "rooms", "--out", str(rooms), "--n", "4", "--size", "32").exit_code == 0
    r = run("eval", "--imagenet", str(shapes), "--model", "test_tiny", "--variant", "tosa", "--keep", "0.5", "--workers", "0", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n_images"] == 12 and 0 <= d["top1"] <= d["top5"] <= 100
    assert d["weights"] == "random" and d["meaningful"] is False and "random weights" in d["accuracy_reason"]
    r = run("eval", "--nyu", str(rooms), "--model", "test_tiny", "--variant", "tome", "--tome-r", "2", "--workers", "0", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n_images"] >= 1 and {"delta1", "absrel", "rmse", "silog"} <= set(d)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3.11 -m venv")]
    assert len(commands) == 2, "the README has exactly two set-up commands"
    assert "pytest" in commands[1] and commands[1] in ci.splitlines()
    assert "tosa-bench sweep --keep 0.5" in commands[0]


def test_the_studied_variant_default_is_the_registrys_match_target():
    # a literal in cli/common so that --help imports no torch; it must stay the method under study
    from tosa_bench.cli.common import STUDIED_VARIANT
    from tosa_bench.methods import registry

    assert registry.match_target().name == STUDIED_VARIANT
