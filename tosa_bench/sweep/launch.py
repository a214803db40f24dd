"""A sweep on many machines: its shards as a submitit job array (Slurm, or local processes).

``launch`` splits the suite's grid into ``jobs`` shards (``--shard i/n``, by sorted
config hash, as by hand) and submits one job per shard through submitit, the tool DeiT
and EViT launch with: on Slurm one array job (``slurm_array_parallelism`` = jobs); with
the local executor one detached process per shard on this machine (for tests and for
users without Slurm). It returns at once; the launch directory holds

- ``launch.json``: launcher, parameters, job ids, the shards' directories;
- ``shards/<i>-of-<n>/``: each shard's own run directory (the usual store, lock, tables);
- ``logs/``: submitit's job files and each job's stdout/stderr.

Each job (:class:`ShardJob`) starts its shard, or resumes it when the directory already
holds it, so a requeued job continues where it stopped: a point is recorded once. Slurm's
timeout and preemption signal (USR2, sent ``signal_delay_s`` before the end) and SIGTERM
stop the shard as Ctrl-C does (the point in flight dropped, every finished one kept; see
:mod:`tosa_bench.sweep.interrupt`), then submitit's checkpointing requeues the job.

:func:`shard_states` says where each shard stands, read from the shards' stores and
locks (so it works the same for every launcher, and after the launching process has
gone); :func:`merge_launch` joins the finished shards into the launch directory itself,
which ``report`` and ``plot`` then read like any run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tosa_bench import cluster
from tosa_bench.errors import OptionError, RunStateError
from tosa_bench.results.store import RunStore, write_atomic
from tosa_bench.sweep.suite import Suite

LAUNCH_FILE = "launch.json"
FORMAT = "tosa-bench-launch/1"


@dataclass
class LaunchSpec:
    """How to launch: ``launcher`` (slurm | local), ``jobs`` (shards), and for Slurm the
    ``partition``, ``gpus_per_job``, ``cpus_per_job``, ``time_min`` (wall-clock limit per
    job, minutes) and extra ``slurm_options`` (sbatch options without the dashes)."""

    launcher: str = "slurm"
    jobs: int = 1
    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    time_min: int = 240
    slurm_options: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        if self.launcher not in cluster.LAUNCHERS:
            raise OptionError(f"--launcher: expected one of {', '.join(cluster.LAUNCHERS)}, got {self.launcher!r}")
        if self.jobs < 1:
            raise OptionError(f"--jobs: expected an integer >= 1, got {self.jobs}")
        if self.gpus_per_job < 0:
            raise OptionError(f"--gpus-per-job: expected >= 0, got {self.gpus_per_job}")
        if self.time_min < 1:
            raise OptionError(f"--time: expected minutes >= 1, got {self.time_min}")


def make_executor(spec: LaunchSpec, folder: Path) -> Any:
    """The submitit executor of ``spec`` (one job per shard, an array on Slurm)."""
    return cluster.make_executor(spec.launcher, folder, time_min=spec.time_min, gpus_per_node=spec.gpus_per_job,
                                 job_name="tosa-bench-sweep", partition=spec.partition, cpus_per_task=spec.cpus_per_job,
                                 array_parallelism=spec.jobs, slurm_options=spec.slurm_options)


class ShardJob:
    """One shard of a sweep as a submitit job: start or resume the shard's run directory
    and measure its points. Checkpointable: on preemption or timeout submitit pickles a
    fresh copy (the shard's progress is in its store, not in this object) and requeues it."""

    def __init__(self, suite: Suite, out: str, shard: tuple[int, int]) -> None:
        self.suite, self.out, self.shard = suite, out, shard

    def __call__(self) -> dict[str, Any]:
        from tosa_bench.sweep.interrupt import Stopped

        previous = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue handler
        try:
            return self._run()
        except Stopped as stop:
            if callable(previous) and stop.signum in (signal.SIGUSR2, signal.SIGTERM):
                previous(signal.SIGUSR2, None)  # checkpoint + requeue (ends the process)
            raise

    def _run(self) -> dict[str, Any]:
        from tosa_bench.sweep.interrupt import stop_on_signals
        from tosa_bench.sweep.session import is_run_dir, measure_plan, plan_new, plan_resume

        path = Path(self.out)
        with stop_on_signals(extra=(signal.SIGUSR2,)):
            plan = plan_resume(path) if path.is_dir() and is_run_dir(path) else plan_new(self.suite, path, self.shard)
            summary = measure_plan(plan)
        return {"shard": list(self.shard), "status": dict(summary.status), "skipped": summary.skipped}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        submitit = cluster.submitit_module()
        return submitit.helpers.DelayedSubmission(ShardJob(self.suite, self.out, self.shard))


def shard_dir(root: Path, i: int, n: int) -> Path:
    return root / "shards" / f"{i}-of-{n}"


def launch(suite: Suite, root: Path, spec: LaunchSpec) -> tuple[dict[str, Any], list[Any]]:
    """Submit the shards (module docstring); returns (the launch record, the submitit jobs).

    ``root`` must be new or empty. The grid is expanded (and the inputs checked) here,
    before anything is submitted."""
    from tosa_bench.sweep.grid import expand, select_shard
    from tosa_bench.sweep.inputs import validate_inputs

    spec.check()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise RunStateError(f"--out {root}: not a new or empty directory; a launch needs its own")
    grid = expand(suite)
    if not grid:
        raise RunStateError("grid: the suite selects no points")
    validate_inputs(suite, grid)
    n = min(spec.jobs, len(grid))
    executor = make_executor(spec, root / "logs")
    root.mkdir(parents=True, exist_ok=True)
    shards = [(i, n) for i in range(1, n + 1)]
    with executor.batch():
        submitted = [executor.submit(ShardJob(suite, str(shard_dir(root, i, n)), (i, n))) for i, n in shards]
    record = {"format": FORMAT, "launcher": spec.launcher, "spec": asdict(spec), "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "grid_points": len(grid), "shards": [{"shard": f"{i}/{n}", "dir": str(shard_dir(root, i, n).relative_to(root)),
                                                    "points": len(select_shard(grid, (i, n))), "job_id": str(job.job_id)}
                                                   for (i, n), job in zip(shards, submitted)],
              "logs": "logs"}
    write_atomic(root / LAUNCH_FILE, json.dumps(record, indent=1) + "\n")
    return record, submitted


def read_launch(root: Path) -> dict[str, Any]:
    """The launch record of ``root`` (RunStateError when it is not a launch directory)."""
    path = root / LAUNCH_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunStateError(f"{root}: not a launch directory (no {LAUNCH_FILE})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RunStateError(f"{path}: unreadable ({type(exc).__name__})") from None
    if record.get("format") != FORMAT:
        raise RunStateError(f"{path}: not a tosa-bench launch record")
    return record


def is_launch_dir(path: Path) -> bool:
    return (path / LAUNCH_FILE).is_file()


@dataclass
class ShardState:
    """Where one shard stands: ``state`` pending | running | stopped | done | failed,
    ``ok`` and ``total`` points, ``not_ok`` points recorded with another status."""

    shard: str
    job_id: str
    state: str
    ok: int
    total: int
    not_ok: int


def shard_states(root: Path) -> list[ShardState]:
    """Each shard's state from its store and lock (module docstring)."""
    from tosa_bench.sweep import lock
    from tosa_bench.sweep.session import is_run_dir

    out = []
    for s in read_launch(root)["shards"]:
        path = root / s["dir"]
        if not (path.is_dir() and is_run_dir(path)):
            out.append(ShardState(s["shard"], s["job_id"], "pending", 0, s["points"], 0))
            continue
        latest = RunStore(path).latest()
        ok = sum(r.get("status") == "ok" for r in latest.values())
        not_ok = len(latest) - ok
        if lock.holder(path) is not None:
            state = "running"
        elif ok == s["points"]:
            state = "done"
        elif ok + not_ok == s["points"]:
            state = "failed"
        else:
            state = "stopped"
        out.append(ShardState(s["shard"], s["job_id"], state, ok, s["points"], not_ok))
    return out


def merge_launch(root: Path) -> Path:
    """Join the shards (all recorded) into ``root`` itself: records.jsonl, env.json,
    suite.toml and the tables, beside launch.json, shards/ and logs/. Done once; a second
    call is a no-op."""
    from tosa_bench.sweep.merge import merge_runs

    if (root / "records.jsonl").is_file():
        return root
    record = read_launch(root)
    tmp = root / ".merge-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    merge_runs([root / s["dir"] for s in record["shards"]], tmp)
    for item in sorted(tmp.iterdir(), key=lambda p: p.name == "records.jsonl"):  # the records last: they mark it done
        os.replace(item, root / item.name)
    tmp.rmdir()
    return root
