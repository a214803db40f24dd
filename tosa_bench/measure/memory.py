"""Peak memory of one run, three separate figures that are never mixed.

* GPU tensor peak (:func:`gpu_peak_tensor_memory`): ``torch.cuda.max_memory_allocated``
  between a reset and the end of the run, i.e. the peak of all live tensors, weights and
  inputs already on the device included (``detail["allocated_before_mib"]`` says how much
  was there before the run).
* GPU process footprint (:func:`nvml_process_memory`): NVML's per-process used GPU
  memory, i.e. CUDA context + PyTorch's allocator cache + anything else the process holds.
  A snapshot at call time; since the caching allocator keeps freed blocks, a snapshot
  taken right after a run reflects its reserved peak (unless ``empty_cache`` ran).
* CPU peak RSS of the run alone (:func:`cpu_peak_rss`): reset the kernel's RSS
  high-water mark through ``/proc/self/clear_refs`` ("5"), run, read ``VmHWM``. It is the
  peak resident set of the whole process during the run (model and interpreter
  included, ``detail["rss_before_mib"]`` gives the level before). If the reset is
  impossible the result is *unavailable with a reason*, never the process-lifetime
  ``ru_maxrss``. Sweeps take it in a child process per point
  (:mod:`tosa_bench.measure.cpu_peak`).

Every figure is a :class:`MemoryReading` in MiB (2**20 bytes). A figure that cannot be
measured (no CUDA device, NVML missing, no /proc) has ``value_mib=None`` and a reason;
it is never reported as 0.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

__all__ = [
    "MIB",
    "MemoryReading",
    "gpu_peak_tensor_memory",
    "nvml_process_memory",
    "nvml_index_for_cuda_device",
    "cpu_peak_rss",
    "freed_memory_returned_to_os",
]

MIB = 2**20  # bytes per MiB


@dataclass(frozen=True)
class MemoryReading:
    """One memory figure.

    value_mib: the figure in MiB (2**20 bytes), or None when it could not be measured.
    method: how it was measured (e.g. ``torch.cuda.max_memory_allocated``).
    reason: why ``value_mib`` is None (None when it was measured).
    detail: extra context in MiB (e.g. the level before the run).
    """

    value_mib: float | None
    method: str
    reason: str | None = None
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.value_mib is not None

    def to_dict(self) -> dict[str, Any]:
        return {"value_mib": self.value_mib, "method": self.method, "reason": self.reason, **self.detail}


# -- GPU tensors ---------------------------------------------------------------------------
GPU_TENSOR_METHOD = "torch.cuda.max_memory_allocated"


def gpu_peak_tensor_memory(fn: Callable[[], Any], device: Any = None, cuda: Any = None) -> MemoryReading:
    """Peak tensor memory (MiB) on a CUDA device while ``fn()`` runs.

    synchronize -> reset_peak_memory_stats -> fn() -> synchronize -> max_memory_allocated.
    ``cuda`` defaults to ``torch.cuda``; tests pass a fake module. Without a CUDA device,
    ``fn`` is not run and the reading is None with reason "no CUDA device".
    """
    if cuda is None:
        import torch

        cuda = torch.cuda
    if not cuda.is_available():
        return MemoryReading(None, GPU_TENSOR_METHOD, "no CUDA device")
    cuda.synchronize(device)
    before = cuda.memory_allocated(device)
    cuda.reset_peak_memory_stats(device)
    fn()
    cuda.synchronize(device)
    peak = cuda.max_memory_allocated(device)
    return MemoryReading(peak / MIB, GPU_TENSOR_METHOD, None, {"allocated_before_mib": before / MIB})


# -- NVML process footprint ----------------------------------------------------------------
NVML_METHOD = "nvml.nvmlDeviceGetComputeRunningProcesses.usedGpuMemory"


def nvml_index_for_cuda_device(index: int, env: Mapping[str, str] | None = None) -> int:
    """NVML index of CUDA device ``index`` as torch numbers it.

    With ``CUDA_VISIBLE_DEVICES`` set to a list of integers, torch's device i is the i-th
    entry; NVML always numbers every GPU. UUID entries or an unset variable map i to i.
    """
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible:
        return index
    entries = [e.strip() for e in visible.split(",")]
    if index < len(entries) and entries[index].isdigit():
        return int(entries[index])
    return index


def _import_pynvml() -> Any:
    import pynvml  # provided by the nvidia-ml-py package

    return pynvml


def nvml_process_memory(nvml_index: int = 0, pid: int | None = None, nvml: Any = None) -> MemoryReading:
    """Used GPU memory of process ``pid`` (default: this process) on NVML device
    ``nvml_index``, in MiB: CUDA context + allocator cache, a SEPARATE figure from the
    tensor peak.

    ``nvml`` is the pynvml module (nvidia-ml-py) or a fake with the same functions. Any
    failure (module missing, no driver, process not listed, no per-process accounting,
    e.g. under MIG or in a container without the host PID namespace) gives a None reading
    whose reason starts with "unavailable: "; nothing is raised.
    """
    pid = os.getpid() if pid is None else pid
    try:
        nvml = nvml if nvml is not None else _import_pynvml()
    except ImportError as exc:
        return MemoryReading(None, NVML_METHOD, f"unavailable: nvidia-ml-py not installed ({exc})")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError and friends: no driver, no library
        return MemoryReading(None, NVML_METHOD, f"unavailable: nvmlInit failed: {exc}")
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
        procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception as exc:
        return MemoryReading(None, NVML_METHOD, f"unavailable: NVML query failed: {exc}")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    mine = [p for p in procs if getattr(p, "pid", None) == pid]
    if not mine:
        return MemoryReading(
            None, NVML_METHOD, f"unavailable: pid {pid} not among NVML device {nvml_index}'s compute processes"
        )
    used = mine[0].usedGpuMemory
    if used is None:
        return MemoryReading(None, NVML_METHOD, "unavailable: NVML reports no per-process usage (usedGpuMemory is None)")
    return MemoryReading(used / MIB, NVML_METHOD)


# -- CPU peak RSS ----------------------------------------------------------------------------
CPU_RSS_METHOD = "/proc/self/clear_refs=5 then VmHWM"


# glibc mallopt parameters and the values we set (bytes)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MEASURING_THRESHOLD = 128 * 1024
# glibc's own ceiling for its dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX),
# and the trim threshold it pairs with it (twice the mmap threshold)
_STEADY_MMAP_THRESHOLD, _STEADY_TRIM_THRESHOLD = 32 * MIB, 64 * MIB


def _glibc():
    """The process's glibc via ctypes (cached), or None where there is none."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            _LIBC = libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else False
        except OSError:
            _LIBC = False
    return _LIBC or None


_LIBC = None


@contextlib.contextmanager
def freed_memory_returned_to_os() -> Iterator[bool]:
    """Within the block, freed memory leaves the resident set, so a run's peak shows as a
    rise of the high-water mark. Yields False where there is no glibc (readings are then
    lower bounds).

    glibc keeps freed blocks resident for reuse: after the first large free it raises its
    mmap threshold and serves later activation buffers from the heap, and a later forward
    that reuses those resident pages does not raise the high-water mark at all (we saw a
    0 MiB "peak" for DeiT-S). So on entry the mmap and trim thresholds are set to 128 KiB
    (``mallopt``) and free heap pages are released (``malloc_trim(0)``).

    On exit the thresholds go to 32 MiB / 64 MiB, where glibc's dynamic threshold settles
    after large frees. They must not stay at 128 KiB: every buffer above that would then be
    a fresh mmap with page faults on each use, which slowed later timing (a ToSA forward
    whose selector works in ~2 MiB chunks lost ~25% of its speed, with seconds of system
    time). A threshold set with ``mallopt`` no longer adapts, hence the fixed values.
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _MEASURING_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _MEASURING_THRESHOLD)
    libc.malloc_trim(0)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _STEADY_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _STEADY_TRIM_THRESHOLD)


def _status_kib(status_path: Path, key: str) -> int | None:
    """Value of ``key`` (e.g. "VmHWM") in kB (KiB) from a /proc status file, or None."""
    for line in status_path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def cpu_peak_rss(
    fn: Callable[[], Any],
    clear_refs_path: str | os.PathLike[str] = "/proc/self/clear_refs",
    status_path: str | os.PathLike[str] = "/proc/self/status",
) -> MemoryReading:
    """Peak resident set size (MiB) of this process while ``fn()`` runs (Linux).

    Writes "5" to ``clear_refs_path`` to reset the high-water mark to the current RSS,
    runs ``fn``, reads ``VmHWM`` (kB = KiB) from ``status_path``. If the reset or the read
    is impossible, ``fn`` is not run and the reading is None with the reason (a fresh
    subprocess is then the way to measure; the process-lifetime ``ru_maxrss`` is never
    substituted). Paths are injectable for tests. ``fn`` runs inside
    :func:`freed_memory_returned_to_os`, so buffers freed before it (and reused by it) do
    not hide its peak.
    """
    clear_refs, status = Path(clear_refs_path), Path(status_path)
    with freed_memory_returned_to_os():
        try:
            before = _status_kib(status, "VmRSS")
        except OSError as exc:
            return MemoryReading(None, CPU_RSS_METHOD, f"unavailable: cannot read {status}: {exc}")
        try:
            with open(clear_refs, "w") as f:
                f.write("5")
        except OSError as exc:
            return MemoryReading(
                None, CPU_RSS_METHOD, f"unavailable: cannot reset the RSS high-water mark via {clear_refs}: {exc}"
            )
        fn()
    try:
        hwm = _status_kib(status, "VmHWM")
    except OSError as exc:
        return MemoryReading(None, CPU_RSS_METHOD, f"unavailable: cannot read {status}: {exc}")
    if hwm is None:
        return MemoryReading(None, CPU_RSS_METHOD, f"unavailable: no VmHWM line in {status}")
    detail = {"rss_before_mib": before / 1024} if before is not None else {}
    return MemoryReading(hwm / 1024, CPU_RSS_METHOD, None, detail)
