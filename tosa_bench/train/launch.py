"""Training as a submitit job (``tosa-bench train --launcher slurm|local ...``): the same
command, run by every process of a (multi-node) job under DistributedDataParallel, with
the files of the ``torchrun`` path (rank 0 writes ``--out``).

Each process of the job learns its place from submitit's job environment (global rank,
number of tasks, local rank, the first node's host name) and exports it as the variables
``torchrun`` would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), then runs
the training of the command, whose inputs were checked before it was submitted
(:func:`tosa_bench.train.loop.train` joins the process group from those variables). On
preemption or timeout submitit requeues the job, which then resumes after the last
finished epoch.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tosa_bench import cluster
from tosa_bench.errors import OptionError


@dataclass
class TrainLaunch:
    """Where to run: ``launcher`` (slurm | local), ``nodes``, ``gpus_per_node`` (one process
    per GPU), ``tasks_per_node`` (processes per node; default one per GPU, at least 1),
    ``partition``, ``time_min`` and extra ``slurm_options`` (KEY=VALUE)."""

    launcher: str
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int | None = None
    partition: str | None = None
    time_min: int = 240
    slurm_options: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    def check(self) -> None:
        """OptionError for a launch that cannot run (before the subcommand's own checks)."""
        if self.launcher not in cluster.LAUNCHERS:
            raise OptionError(f"--launcher: expected one of {', '.join(cluster.LAUNCHERS)}, got {self.launcher!r}")
        if self.launcher == "local" and self.nodes > 1:
            raise OptionError("--launcher local: one machine only (--nodes 1)")


class TrainJob:
    """One process of a launched training job (module docstring): ``run(resume)`` is the
    training, bound to its command's checked settings."""

    def __init__(self, run: Callable[..., None], resume: bool, port: int) -> None:
        self.run, self.resume, self.port = run, resume, port

    def __call__(self) -> int:
        submitit = cluster.submitit_module()
        env = submitit.JobEnvironment()
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
                          MASTER_ADDR=str(env.hostnames[0]), MASTER_PORT=str(self.port))
        self.run(resume=self.resume)
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeued: continue after the last finished epoch (the loop checkpoints each one)."""
        submitit = cluster.submitit_module()
        return submitit.helpers.DelayedSubmission(TrainJob(self.run, True, self.port))


def submit_training(run: Callable[..., None], resume: bool, spec: TrainLaunch, out_dir: Path) -> tuple[Any, Path]:
    """Submit ``run`` (the training of one command) as one job of ``spec``; returns the
    submitit job and its log folder (``<out>-logs``, beside the run)."""
    spec.check()
    logs = out_dir.parent / f"{out_dir.name}-logs"
    ex = cluster.make_executor(spec.launcher, logs, time_min=spec.time_min, gpus_per_node=spec.gpus_per_node, nodes=spec.nodes,
                               tasks_per_node=spec.tasks, job_name="tosa-bench-train", partition=spec.partition,
                               slurm_options=cluster.parse_slurm_options(spec.slurm_options))
    port = 20000 + zlib.crc32(str(out_dir.resolve()).encode()) % 20000  # one port per run, the same after a requeue
    return ex.submit(TrainJob(run, resume, port)), logs
