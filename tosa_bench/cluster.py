"""submitit, the one way tosa-bench reaches a Slurm cluster (or local processes): the
import with its install hint, ``KEY=VALUE`` sbatch options, and the executor with its
parameters. Sweeps (:mod:`tosa_bench.sweep.launch`) and training
(:mod:`tosa_bench.train.launch`) both submit through :func:`make_executor`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tosa_bench.errors import OptionError

LAUNCHERS = ("slurm", "local")
INSTALL_HINT = "pip install 'tosa-bench[cluster]' (or: pip install submitit)"
#: seconds before the time limit at which Slurm sends USR2 (submitit's signal_delay_s)
SIGNAL_DELAY_S = 120


def submitit_module() -> Any:
    """The submitit module; OptionError saying what to install when it is missing."""
    try:
        import submitit
    except ImportError:
        raise OptionError(f"--launcher needs submitit, which is not installed: {INSTALL_HINT}") from None
    return submitit


def parse_slurm_options(items: list[str] | None) -> dict[str, str]:
    """["account=abc", "qos=high"] -> {"account": "abc", "qos": "high"} (OptionError
    naming the first one without '=')."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--slurm-option {item!r}: expected KEY=VALUE, e.g. account=myproject")
        out[key.strip().lstrip("-")] = value.strip()
    return out


def make_executor(launcher: str, folder: Path, *, time_min: int, gpus_per_node: int, job_name: str, nodes: int = 1,
                  tasks_per_node: int = 1, partition: str | None = None, cpus_per_task: int | None = None,
                  array_parallelism: int | None = None, slurm_options: dict[str, str] | None = None) -> Any:
    """A submitit executor for ``launcher`` (slurm | local) with its parameters set; no job
    is submitted. Slurm sends USR2 :data:`SIGNAL_DELAY_S` seconds before the time limit
    (submitit then checkpoints and requeues). OptionError when Slurm is not on this machine."""
    if launcher not in LAUNCHERS:
        raise OptionError(f"--launcher: expected one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    submitit = submitit_module()
    if launcher == "local":
        if nodes > 1:
            raise OptionError("--launcher local: one machine only (--nodes 1)")
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=time_min, gpus_per_node=gpus_per_node, tasks_per_node=tasks_per_node,
                             signal_delay_s=SIGNAL_DELAY_S)
        return ex
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise OptionError("--launcher slurm: no Slurm on this machine (sbatch/srun not found); run it on a cluster's login node, "
                          "or use --launcher local here")
    ex = submitit.SlurmExecutor(folder=str(folder))
    params: dict[str, Any] = {"time": time_min, "nodes": nodes, "gpus_per_node": gpus_per_node, "ntasks_per_node": tasks_per_node,
                              "signal_delay_s": SIGNAL_DELAY_S, "job_name": job_name}
    optional = {"partition": partition, "cpus_per_task": cpus_per_task, "array_parallelism": array_parallelism,
                "additional_parameters": dict(slurm_options) if slurm_options else None}
    params.update({k: v for k, v in optional.items() if v})
    ex.update_parameters(**params)
    return ex
