"""The environment a measurement was taken in, as one JSON-friendly dict.

Every field that cannot be determined is None, and a ``<field>_reason`` key says why
(e.g. ``driver_version_reason: "no CUDA device"``). Nothing here raises for a missing
GPU, NVML, git or /proc.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

# cpu_model lives in tosa_bench.host (chunk calibrations need it too); it stays importable from here
from tosa_bench.host import cpu_model

__all__ = ["environment_record", "cpu_model", "git_state", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_state(path: str | os.PathLike[str] = REPO_ROOT) -> dict[str, Any]:
    """``{"git_commit", "git_dirty", "git_reason"}`` of the checkout holding ``path``.

    Dirty = ``git status --porcelain`` lists anything (untracked files included). No git,
    no checkout or no commit yet gives ``git_commit=None`` with the reason.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    if not Path(path).is_dir():
        return {"git_commit": None, "git_dirty": None, "git_reason": f"{path} is not a directory"}
    try:
        commit = git("rev-parse", "HEAD")
    except FileNotFoundError:
        return {"git_commit": None, "git_dirty": None, "git_reason": "git not installed"}
    except subprocess.CalledProcessError as exc:
        msg = (exc.stderr or "").strip().splitlines()
        return {"git_commit": None, "git_dirty": None, "git_reason": msg[-1] if msg else "git rev-parse HEAD failed"}
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"git_commit": None, "git_dirty": None, "git_reason": f"git failed: {exc}"}
    try:
        dirty: bool | None = bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {"git_commit": commit, "git_dirty": dirty, "git_reason": None}


def _driver_version(nvml: Any) -> tuple[str | None, str | None]:
    try:
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        nvml.nvmlInit()
    except Exception as exc:
        return None, f"NVML unavailable: {exc}"
    try:
        version = nvml.nvmlSystemGetDriverVersion()
        return (version.decode() if isinstance(version, bytes) else str(version)), None
    except Exception as exc:
        return None, f"NVML query failed: {exc}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def environment_record(
    device: Any = None,
    nvml: Any = None,
    cuda: Any = None,
    cpuinfo_path: str | os.PathLike[str] = "/proc/cpuinfo",
    repo_path: str | os.PathLike[str] = REPO_ROOT,
) -> dict[str, Any]:
    """Versions, hardware, code state and time of this run.

    ``device``: the device measured ("cpu", "cuda", "cuda:1", torch.device); default
    "cuda" when available, else "cpu". ``nvml`` (pynvml module), ``cuda`` (torch.cuda),
    ``cpuinfo_path`` and ``repo_path`` are injectable for tests.

    Keys: tosa_bench_version, python, platform, hostname, time_utc (ISO 8601, UTC), torch,
    cuda (torch's CUDA build version), cudnn, cuda_available, device, device_name,
    driver_version, cpu_model, logical_cpus, usable_cpus (affinity), torch_threads,
    git_commit, git_dirty, plus ``*_reason`` keys for the fields that are None; on a CPU
    also cpu_chunk_machine and cpu_chunk_cache (what chunk calibrations are keyed by and
    where they are kept, :mod:`tosa_bench.models.chunks`); on CUDA also
    selector_gpu_kernel (the Triton version of ToSA's selector kernel, or None with a reason).
    """
    import torch

    from tosa_bench import __version__

    cuda = torch.cuda if cuda is None else cuda
    cuda_available = bool(cuda.is_available())
    dev = torch.device(device if device is not None else ("cuda" if cuda_available else "cpu"))

    rec: dict[str, Any] = {
        "tosa_bench_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "cuda_available": cuda_available,
        "device": str(dev),
        "device_name": None,
        "driver_version": None,
        "cpu_model": cpu_model(cpuinfo_path),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if rec["cuda"] is None:
        rec["cuda_reason"] = "torch built without CUDA"
    try:
        rec["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # cudnn.version() can fail to load the library
        rec["cudnn"] = None
    if rec["cudnn"] is None:
        rec["cudnn_reason"] = "cuDNN not available"

    if dev.type == "cuda":
        if cuda_available:
            rec["device_name"] = cuda.get_device_name(dev)
            rec["driver_version"], reason = _driver_version(nvml)
            if reason:
                rec["driver_version_reason"] = reason
            from tosa_bench.kernels import selector_triton

            # ToSA's selector runs as one Triton kernel where it can; the record says whether it could
            rec["selector_gpu_kernel"], reason = selector_triton.version_or_reason()
            if reason:
                rec["selector_gpu_kernel_reason"] = reason
        else:
            rec["device_name_reason"] = rec["driver_version_reason"] = "no CUDA device"
    else:
        from tosa_bench.models.chunks import cache_path, machine_signature

        rec["device_name"] = rec["cpu_model"]
        rec["driver_version_reason"] = f"no GPU driver for device {str(dev)!r}"
        # chunked CPU ops are calibrated per machine; each record's cpu_chunks names its budgets
        rec["cpu_chunk_machine"] = machine_signature()
        rec["cpu_chunk_cache"] = str(cache_path())
        if dev.type == "cpu":
            from tosa_bench.kernels import selector_cpu

            # ToSA's fused CPU selector, where it can be built (timed against the PyTorch ops)
            rec["selector_cpu_kernel"] = selector_cpu.build_tag()
            if rec["selector_cpu_kernel"] is None:
                rec["selector_cpu_kernel_reason"] = selector_cpu.unavailable_reason() or "not built"
    if rec["cpu_model"] is None:
        rec["cpu_model_reason"] = f"no model line in {cpuinfo_path} and platform.processor() is empty"
    rec.update(git_state(repo_path))
    if rec["git_reason"] is None:
        del rec["git_reason"]
    return rec
