"""Sweeps on many machines (sweep/launch.py): shards as submitit jobs. The local executor
runs the real path on this machine; the Slurm path is checked down to the sbatch script
submitit writes, with stand-ins for sbatch and srun (no cluster here)."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("submitit", reason="submitit (the 'cluster' extra) is not installed")

from tosa_bench.cli import app  # noqa: E402
from tosa_bench.errors import OptionError  # noqa: E402
from tosa_bench.results import load_run  # noqa: E402
from tosa_bench.results.store import read_records  # noqa: E402
from tosa_bench.sweep import lock  # noqa: E402
from tosa_bench.sweep.launch import LaunchSpec, launch, shard_states  # noqa: E402
from tosa_bench.sweep.suite import load_suite  # noqa: E402

runner = CliRunner()
COUNTS = ["--no-timing", "--no-latency", "--no-memory"]


def _wait(root: Path, timeout: float = 300) -> list:
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = shard_states(root)
        if all(s.state == "done" for s in states):
            return states
        time.sleep(0.5)
    raise AssertionError(f"shards not done: {shard_states(root)}; logs in {root / 'logs'}")


def test_local_launch_equals_one_process(tmp_path):
    one = tmp_path / "one"
    res = runner.invoke(app, ["sweep", "--suite", "ci", *COUNTS, "--no-figures", "--out", str(one)])
    assert res.exit_code == 0, res.output
    root = tmp_path / "launched"
    res = runner.invoke(app, ["sweep", "--suite", "ci", *COUNTS, "--launcher", "local", "--jobs", "3", "--out", str(root)])
    assert res.exit_code == 0, res.output
    assert "submitted 3 local jobs" in res.output and "tosa-bench status" in res.output
    _wait(root)
    res = runner.invoke(app, ["status", str(root)])
    assert res.exit_code == 0 and "merged into" in res.output, res.output
    res = runner.invoke(app, ["sweep", "--resume", str(root)])  # the same view; merging again adds nothing
    assert res.exit_code == 0 and "all shards done" in res.output
    lines = read_records(root / "records.jsonl").records
    single = {r["config_hash"]: r for r in load_run(one).records}
    assert len(lines) == len(single) and {r["config_hash"] for r in lines} == set(single)  # each point once
    for r in lines:
        ref = single[r["config_hash"]]
        assert (r["gmacs"], r["params"], r["tokens_per_block"]) == (ref["gmacs"], ref["params"], ref["tokens_per_block"])
    assert "| method" in runner.invoke(app, ["report", str(root), "--format", "md"]).output


def test_preempted_shard_is_requeued_and_records_each_point_once(tmp_path):
    suite = load_suite("ci").with_overrides(variants=("dense", "tosa"), latency=False, memory=False, time_budget_s=0.3,
                                            pair_budget_s=0.6, pair_min_rounds=4)
    root = tmp_path / "run"
    record, jobs = launch(suite, root, LaunchSpec("local", 1, time_min=20))
    shard = root / record["shards"][0]["dir"]
    deadline = time.time() + 240
    while time.time() < deadline and not ((shard / "records.jsonl").is_file() and read_records(shard / "records.jsonl").records):
        time.sleep(0.05)
    assert (shard / "records.jsonl").is_file(), "the shard never recorded a point"
    holder = lock.holder(shard)  # the shard's process (what Slurm signals), from its run lock
    assert holder is not None
    os.kill(holder["pid"], signal.SIGTERM)
    _wait(root)
    lines = read_records(shard / "records.jsonl").records
    hashes = [r["config_hash"] for r in lines]
    assert len(hashes) == len(set(hashes)) == record["shards"][0]["points"]  # every point, once
    log = "".join(p.read_text() for p in (root / "logs").glob("*_log.*"))
    assert "Requeued job" in log and log.count("Starting with JobEnvironment") == 2, log[-3000:]
    result = jobs[0].result()  # the requeued job's own return value: what it measured after the restart
    assert result["shard"] == [1, 1] and result["skipped"] >= 1 and sum(result["status"].values()) + result["skipped"] == len(hashes)


@pytest.fixture()
def fake_slurm(tmp_path, monkeypatch):
    """sbatch/srun stand-ins on PATH: sbatch keeps a copy of the script and answers with a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "submitted.sh"


def test_slurm_parameters_reach_the_sbatch_script(fake_slurm, tmp_path):
    root = tmp_path / "run"
    res = runner.invoke(app, ["sweep", "--suite", "ci", *COUNTS, "--launcher", "slurm", "--jobs", "3", "--partition", "gpu",
                              "--gpus-per-job", "2", "--time", "90", "--slurm-option", "account=proj", "--out", str(root)])
    assert res.exit_code == 0, res.output
    script = fake_slurm.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --time=90", "#SBATCH --array=0-2%3",
                 "#SBATCH --account=proj", "#SBATCH --signal=USR2@120", "#SBATCH --ntasks-per-node=1"):
        assert line in script, script
    assert "4242_0, 4242_1, 4242_2" in res.output
    assert [s.state for s in shard_states(root)] == ["pending"] * 3


def test_no_slurm_and_no_submitit_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    res = runner.invoke(app, ["sweep", "--launcher", "slurm", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no Slurm on this machine" in res.output
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    from tosa_bench.sweep.launch import make_executor

    with pytest.raises(OptionError, match=r"pip install 'tosa-bench\[cluster\]'"):
        make_executor(LaunchSpec("local", 1), tmp_path / "logs")
    res = runner.invoke(app, ["sweep", "--launcher", "local", "--jobs", "0"])
    assert res.exit_code == 2


# ------------------------------------------------------------------------- training jobs
def _wait_file(path: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not path.is_file():
        time.sleep(0.5)
    assert path.is_file(), f"{path} never appeared"


def test_local_training_job_with_two_processes_steps_like_one(tmp_path, same_selector_step):
    from safetensors.torch import load_file

    data = tmp_path / "shapes"
    assert runner.invoke(app, ["data", "make", "shapes", "--out", str(data), "--n", "40", "--size", "48"]).exit_code == 0
    args = ["selector", "--model", "test_tiny", "--data", str(data), "--epochs", "1", "-b", "16", "--limit", "16", "--device", "cpu",
            "--workers", "0", "--warmup-epochs", "0", "--lr", "1e-2"]
    res = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", "--launcher", "local", "--gpus-per-node", "0", "--tasks-per-node", "2", *args,
                              "--out", str(tmp_path / "two")])
    assert res.exit_code == 0 and "submitted local job" in res.output, res.output
    _wait_file(tmp_path / "two" / "selectors.safetensors")
    time.sleep(1.0)  # the file is renamed into place whole; let the job finish its exit
    a, b = load_file(tmp_path / "one" / "selectors.safetensors"), load_file(tmp_path / "two" / "selectors.safetensors")
    same_selector_step(a, b)
    assert json.loads((tmp_path / "two" / "train.json").read_text())["world_size"] == 2


def test_training_job_parameters_reach_the_sbatch_script(fake_slurm, tmp_path):
    data = tmp_path / "shapes"
    assert runner.invoke(app, ["data", "make", "shapes", "--out", str(data), "--n", "20", "--size", "48"]).exit_code == 0
    res = runner.invoke(app, ["train", "--launcher", "slurm", "--nodes", "2", "--gpus-per-node", "8", "--partition", "a100",
                              "--time", "600", "selector", "--model", "test_tiny", "--data", str(data), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    script = fake_slurm.read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8", "#SBATCH --partition=a100",
                 "#SBATCH --time=600", "#SBATCH --signal=USR2@120"):
        assert line in script, script
    res = runner.invoke(app, ["train", "--launcher", "local", "--nodes", "2", "selector", "--data", str(data), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "one machine only" in res.output
    res = runner.invoke(app, ["train", "--launcher", "slurm", "selector", "--model", "test_tiny", "--data", str(tmp_path / "nope"),
                              "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "nope" in res.output  # checked here, before anything is submitted
