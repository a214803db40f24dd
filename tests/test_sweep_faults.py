"""Faults and load on real ``tosa-bench sweep`` processes (issue 14): SIGKILL at random
moments, SIGTERM, two writers of one run, two runs at once, failing points, a 200-point
grid. The tiny model, no timing: each point costs a fraction of a second, a process start
about two (torch)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tosa_bench.cli import app
from tosa_bench.errors import RunStateError
from tosa_bench.results import load_run
from tosa_bench.results.store import read_records
from tosa_bench.sweep import lock
from tosa_bench.sweep.interrupt import Stopped, deferred, stop_on_signals
from tosa_bench.sweep.session import plan_new, read_resolved
from tosa_bench.results.store import RunStore
from test_sweep import tiny_suite

#: the tiny model, nothing timed, no figures: what every sweep here shares
BASE = ["--model", "test_tiny", "-b", "1", "--device", "cpu", "--no-timing", "--no-latency", "--no-memory", "--no-figures"]
#: 10 points: dense once, tosa/evit/random at three keeps
ARGS = [*BASE, "--variant", "dense", "--variant", "tosa", "--variant", "evit", "--variant", "random",
        "--keep", "0.5", "--keep", "0.7", "--keep", "0.9"]
N_POINTS = 10
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
#: seconds to wait for a child's next record or its end before calling it stuck: a guard,
#: not a measurement (a healthy child is never waited for this long). Generous because on
#: a busy 2-core machine a child's start and first point took over 60 s (load average 9)
PATIENCE = 300


def start(*args: str) -> subprocess.Popen:
    """``tosa-bench ARGS`` as a child process (stdout and stderr to pipes)."""
    return subprocess.Popen([sys.executable, "-c", "from tosa_bench.cli import app; app()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def n_records(run: Path) -> int:
    return len(read_records(run / "records.jsonl").records)


def wait_for_records(proc: subprocess.Popen, run: Path, more_than: int, timeout: float = PATIENCE) -> bool:
    """Wait until ``run`` holds more than ``more_than`` records (True) or ``proc`` ended (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if n_records(run) > more_than:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError(f"no new record in {run} after {timeout} s")


def grid_hashes(run: Path) -> set[str]:
    _, grid, _, _ = read_resolved(RunStore(run))
    return {gp.hash for gp in grid}


def assert_each_point_once(run: Path) -> None:
    """Every grid point has exactly one record in the file itself (not only after
    last-record-wins), all ok, and the file is undamaged."""
    loaded = read_records(run / "records.jsonl")
    assert not loaded.torn_tail and not loaded.bad_lines
    hashes = [r["config_hash"] for r in loaded.records]
    assert sorted(hashes) == sorted(grid_hashes(run)) and len(hashes) == N_POINTS
    assert all(r["status"] == "ok" for r in loaded.records)


# ----------------------------------------------------------------------------- SIGKILL
def test_sigkill_at_random_moments_then_the_same_command_resumes_each_point_once(tmp_path):
    """Ten SIGKILLs, each followed by the same command line (``--out DIR --resume DIR``
    starts the run the first time and continues it after): every point ends recorded
    exactly once. Even kills land at a random time after the start (planning, imports,
    mid-point); odd ones just after a new record (while the next point runs)."""
    run = tmp_path / "run"
    command = ["sweep", *ARGS, "--out", str(run), "--resume", str(run)]
    rng = random.Random(14)
    took_over = 0
    for i in range(10):
        before = n_records(run)
        proc = start(*command)
        if i % 2 == 0:
            time.sleep(rng.uniform(0.2, 2.5))
        elif wait_for_records(proc, run, before):
            time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        _, stderr = proc.communicate()
        assert proc.returncode in (-signal.SIGKILL, 0), stderr
        took_over += "which is gone; taking the run over" in stderr
        got = read_records(run / "records.jsonl")
        assert not got.bad_lines  # at most a torn last line: cut off by the next resume
    proc = start(*command)
    stdout, stderr = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0, stderr
    assert_each_point_once(run)
    assert took_over >= 1  # a kill that left the lock's holder behind was noticed and said
    assert (run / lock.LOCK).read_text() == ""  # the last process let go cleanly


# ----------------------------------------------------------------------------- two writers
def test_two_concurrent_resumes_one_is_refused_and_each_point_is_recorded_once(tmp_path):
    """Writer A is frozen (SIGSTOP) while it holds the run, so writer B surely starts
    while A is alive: B is refused with one line naming A; A, let go on, completes."""
    run = tmp_path / "run"
    plan_new(tiny_suite(variants=("dense", "tosa", "evit", "random"), keeps=(0.5, 0.7, 0.9)), run, check_inputs=False)
    lock.release(run)  # the run is handed to the processes below
    a = start("sweep", "--resume", str(run), "--no-figures")
    try:
        assert wait_for_records(a, run, 0)
        a.send_signal(signal.SIGSTOP)
        b = start("sweep", "--resume", str(run), "--no-figures")
        _, b_err = b.communicate(timeout=PATIENCE)
    finally:
        a.send_signal(signal.SIGCONT)
    _, a_err = a.communicate(timeout=PATIENCE)
    assert a.returncode == 0, a_err
    assert b.returncode == 2, b_err
    (line,) = b_err.strip().splitlines()
    assert line.startswith(f"error: {run.resolve()} is being written by another tosa-bench process (pid {a.pid} on host ")
    assert " since " in line and "then --resume" in line and "Traceback" not in b_err
    assert_each_point_once(run)


def test_lock_is_refused_to_a_second_holder_and_taken_over_from_a_dead_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tosa_bench.sweep import lock\n"
                               f"lock.acquire({str(run)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        info = json.loads((run / lock.LOCK).read_text())
        assert info["pid"] == holder.pid and info["host"] and info["started"]
        assert lock.holder(run) == info
        with pytest.raises(RunStateError, match=f"being written by another tosa-bench process \\(pid {holder.pid} on host "):
            lock.acquire(run)
    finally:
        holder.kill()
        holder.wait()
    notes: list[str] = []
    assert lock.holder(run) is None  # the kernel dropped the dead process's lock
    assert lock.acquire(run, note=notes.append)
    assert notes == [f"note: {run.resolve()} was locked by pid {holder.pid} on host {info['host']} since "
                     f"{info['started']}, which is gone; taking the run over"]
    assert json.loads((run / lock.LOCK).read_text())["pid"] == os.getpid()
    assert not lock.acquire(run)  # re-entrant within a process
    lock.release(run)
    assert (run / lock.LOCK).read_text() == "" and lock.holder(run) is None


# ----------------------------------------------------------------------------- SIGTERM
def test_sigterm_stops_like_ctrl_c_with_the_resume_hint(tmp_path):
    run = tmp_path / "run"
    proc = start("sweep", *ARGS, "--out", str(run))
    assert wait_for_records(proc, run, 0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 143, stderr
    assert f"terminated (SIGTERM): finished points are in {run}; continue with: tosa-bench sweep --resume {run}" in stderr
    got = read_records(run / "records.jsonl")
    assert not got.torn_tail and not got.bad_lines and 1 <= len(got.records) < N_POINTS
    assert (run / lock.LOCK).read_text() == ""  # released on the way out, not left stale
    proc = start("sweep", "--resume", str(run), "--no-figures")
    _, stderr = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0, stderr
    assert_each_point_once(run)


def test_a_signal_while_a_record_is_appended_waits_for_the_record():
    with stop_on_signals():
        with pytest.raises(Stopped) as stop:
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now, and held the signal
                finished = True
        assert finished and stop.value.exit_code == 143 and stop.value.name == "SIGTERM"
        with pytest.raises(Stopped) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert stop.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ----------------------------------------------------------------------------- failing points
def test_failing_points_are_recorded_with_their_status_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """Through the CLI: one point runs out of memory, one gives NaN, one cannot read an
    image during its accuracy; each is recorded with its status, the others are ok, and
    the exit code (1) and the last line say so."""
    import torch

    from tosa_bench.data.synthetic import make_dataset
    from tosa_bench.measure import point as point_mod
    from tosa_bench.measure.spec import NonFiniteOutput
    from tosa_bench.sweep.accuracy import AccuracyPlan

    real_measure, real_classify = point_mod.measure_point, AccuracyPlan._classify
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

    def measure(point, settings, stage=lambda s: None):
        if point.variant == "tosa":
            raise oom("CUDA out of memory. Tried to allocate 2.00 GiB")
        if point.variant == "evit":
            raise NonFiniteOutput("the model output holds NaN")
        return real_measure(point, settings, stage)

    def classify(self, point, batch):
        if point.variant == "random":
            raise OSError("cannot identify image file 'val/n0/bad.jpg'")
        return real_classify(self, point, batch)

    monkeypatch.setattr(point_mod, "measure_point", measure)
    monkeypatch.setattr(AccuracyPlan, "_classify", classify)
    data = make_dataset("shapes", tmp_path / "shapes", n=2, size=32)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["sweep", *BASE, "--variant", "dense", "--variant", "tosa", "--variant", "evit",
                                   "--variant", "random", "--keep", "0.5", "--imagenet", str(data), "--limit", "4",
                                   "--out", str(run)])
    assert res.exit_code == 1, res.output
    status = {r["variant"]: (r["status"], r["error"]) for r in read_records(run / "records.jsonl").records}
    assert status["dense"] == ("ok", None)
    assert status["tosa"][0] == "oom" and "out of memory" in status["tosa"][1]
    assert status["evit"] == ("error", "measure: NonFiniteOutput: the model output holds NaN")
    assert status["random"] == ("error", "accuracy: OSError: cannot identify image file 'val/n0/bad.jpg'")
    assert "points not ok: 1 oom, 2 error" in res.output


# ----------------------------------------------------------------------------- load
def test_200_point_grid_completes_with_200_records(tmp_path, monkeypatch):
    """200 points of the tiny model through the sweep command. The per-point measurement
    is replaced by the instant stand-in of test_sweep (fvcore's counting, ~0.1-1 s per
    point on 2 cores, is tested elsewhere): this is the load on the runner, the store,
    the tables."""
    from tosa_bench.measure import point as point_mod
    from test_sweep import fake_measure

    monkeypatch.setattr(point_mod, "measure_point", fake_measure)
    args = ["sweep", *BASE, "--variant", "tosa", "--variant", "evit"]
    for k in range(1, 101):
        args += ["--keep", f"{k / 100:.2f}"]
    res = CliRunner().invoke(app, [*args, "--dry-run"])
    assert res.exit_code == 0 and "200 points" in res.output, res.output
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    loaded = read_records(tmp_path / "run" / "records.jsonl")
    assert len(loaded.records) == 200 and len({r["config_hash"] for r in loaded.records}) == 200
    assert not loaded.torn_tail and not loaded.bad_lines and all(r["status"] == "ok" for r in loaded.records)
    assert (tmp_path / "run" / "table.csv").is_file()


def test_two_sweeps_at_once_write_separate_runs(tmp_path):
    """The same command twice at the same moment, default run directories under one
    --runs-dir: two directories (the second gets a suffix), each with its own whole run."""
    runs = tmp_path / "runs"
    args = ["sweep", *BASE, "--variant", "dense", "--variant", "tosa", "--keep", "0.5", "--keep", "0.7",
            "--runs-dir", str(runs)]
    procs = [start(*args), start(*args)]
    for p in procs:
        _, stderr = p.communicate(timeout=PATIENCE)
        assert p.returncode == 0, stderr
    dirs = sorted(runs.iterdir())
    assert len(dirs) == 2
    for d in dirs:
        recs = read_records(d / "records.jsonl").records
        assert len(recs) == 3 and len({r["config_hash"] for r in recs}) == 3
        assert {r["run_id"] for r in recs} == {d.name}
        assert {r["session"] for r in recs} and len({r["session"] for r in recs}) == 1


# ----------------------------------------------------------------------------- adding data
def test_adding_imagenet_to_a_finished_run_measures_only_the_missing_accuracy(tmp_path):
    """A run without accuracy, resumed with the same command plus --imagenet: each point
    gets one more record (its speed fields kept, the accuracy filled), so that the store's
    last-record-wins rule gives one record per point, with top-1; a further resume
    measures nothing."""
    from tosa_bench.data.synthetic import make_dataset

    data = make_dataset("shapes", tmp_path / "shapes", n=2, size=32)
    run = tmp_path / "run"
    command = ["sweep", *BASE, "--variant", "dense", "--variant", "tosa", "--keep", "0.5", "--out", str(run)]
    runner = CliRunner()
    assert runner.invoke(app, command).exit_code == 0
    first = {r["config_hash"]: r for r in read_records(run / "records.jsonl").records}
    assert all(r["top1"] is None for r in first.values())
    res = runner.invoke(app, [*command, "--resume", str(run), "--imagenet", str(data), "--dry-run"])
    assert "2 of 2 points to measure, 2 of them ok points that lack their accuracy" in res.output, res.output
    res = runner.invoke(app, [*command, "--resume", str(run), "--imagenet", str(data)])
    assert res.exit_code == 0 and "2 ok points: accuracy added" in res.output, res.output
    raw = read_records(run / "records.jsonl").records
    assert len(raw) == 4  # the file keeps the first records; the last one per point is its result
    latest = load_run(run).records
    assert len(latest) == 2
    for r in latest:
        assert r["top1"] is not None and r["n_images"] >= 1
        assert r["gmacs"] == first[r["config_hash"]]["gmacs"] and r["session"] == first[r["config_hash"]]["session"]
        assert r["accuracy_session"]
    stored, _, _, _ = read_resolved(RunStore(run))
    assert stored.imagenet == str(data.resolve())  # kept: a plain --resume goes on with it
    res = runner.invoke(app, ["sweep", "--resume", str(run), "--no-figures"])
    assert res.exit_code == 0 and "2 points already ok" in res.output
    assert len(read_records(run / "records.jsonl").records) == 4
    res = runner.invoke(app, ["sweep", "--resume", str(run), "--imagenet", str(tmp_path)])
    assert res.exit_code == 2 and "--imagenet (stored" in res.output


def test_adding_nyu_depth_to_a_finished_run(tmp_path):
    """The same for depth: --nyu with --depth-checkpoint on a run that had no data."""
    from tosa_bench.build import build_model
    from tosa_bench.data.synthetic import make_dataset
    from tosa_bench.tasks.depth_model import DepthModel, save_depth_checkpoint

    rooms = make_dataset("rooms", tmp_path / "rooms", n=2, size=32)
    depth = tmp_path / "depth.pth"
    save_depth_checkpoint(DepthModel(build_model("test_tiny"), features=8), depth)
    run = tmp_path / "run"
    command = ["sweep", *BASE, "--variant", "dense", "--variant", "evit", "--keep", "0.5", "--out", str(run)]
    runner = CliRunner()
    assert runner.invoke(app, command).exit_code == 0
    res = runner.invoke(app, [*command, "--resume", str(run), "--nyu", str(rooms), "--depth-checkpoint", str(depth)])
    assert res.exit_code == 0 and "2 ok points: accuracy added" in res.output, res.output
    latest = load_run(run).records
    assert len(latest) == 2 and len(read_records(run / "records.jsonl").records) == 4
    assert all(r["delta1"] is not None and r["depth_n_images"] >= 1 and r["top1"] is None for r in latest)
