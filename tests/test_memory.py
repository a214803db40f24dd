"""Peak-memory readings with fake torch.cuda, fake NVML and fake /proc files; one real
/proc check on Linux."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import tosa_bench.measure.memory as memory
from tosa_bench.measure.memory import (
    MIB,
    MemoryReading,
    cpu_peak_rss,
    gpu_peak_tensor_memory,
    nvml_index_for_cuda_device,
    nvml_process_memory,
)

# -- GPU tensor peak ---------------------------------------------------------------------


class FakeCuda:
    def __init__(self, available: bool = True) -> None:
        self.available = available
        self.log: list[str] = []
        self.allocated = 100 * MIB
        self.peak = self.allocated

    def is_available(self) -> bool:
        return self.available

    def synchronize(self, device: Any = None) -> None:
        self.log.append("sync")

    def memory_allocated(self, device: Any = None) -> int:
        return self.allocated

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self.log.append("reset")
        self.peak = self.allocated

    def max_memory_allocated(self, device: Any = None) -> int:
        self.log.append("max")
        return self.peak


def test_gpu_peak_with_fake_cuda() -> None:
    cuda = FakeCuda()

    def run() -> None:
        cuda.log.append("run")
        cuda.peak = 100 * MIB + 3 * MIB // 2

    r = gpu_peak_tensor_memory(run, device=0, cuda=cuda)
    assert cuda.log == ["sync", "reset", "run", "sync", "max"]
    assert r.value_mib == pytest.approx(101.5) and r.reason is None and r.available
    assert r.detail == {"allocated_before_mib": 100.0}
    assert r.method == "torch.cuda.max_memory_allocated"


def test_gpu_peak_without_cuda_is_none_with_reason() -> None:
    ran: list[bool] = []
    r = gpu_peak_tensor_memory(lambda: ran.append(True), cuda=FakeCuda(available=False))
    assert r.value_mib is None and r.reason == "no CUDA device" and not r.available
    assert not ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path of the real torch.cuda")
def test_gpu_peak_real_torch_without_gpu() -> None:
    assert gpu_peak_tensor_memory(lambda: None).reason == "no CUDA device"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU: real max_memory_allocated")
def test_gpu_peak_real() -> None:
    r = gpu_peak_tensor_memory(lambda: torch.empty(64 * MIB, dtype=torch.uint8, device="cuda"))
    assert r.value_mib is not None and r.value_mib >= 64


# -- NVML ----------------------------------------------------------------------------------


class NVMLError(Exception):
    pass


class FakeNvml:
    NVMLError = NVMLError

    def __init__(self, procs: list[Any] | None = None, fail: str | None = None) -> None:
        self.procs = procs or []
        self.fail = fail
        self.calls: list[Any] = []

    def nvmlInit(self) -> None:
        if self.fail == "init":
            raise NVMLError("Driver Not Loaded")
        self.calls.append("init")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self.calls.append(("handle", index))
        if self.fail == "handle":
            raise NVMLError("Invalid Argument")
        return f"gpu{index}"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:
        self.calls.append(("procs", handle))
        return self.procs

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")


def _proc(pid: int, used: int | None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=used)


def test_nvml_picks_our_pid_and_converts_to_mib() -> None:
    me = os.getpid()
    nvml = FakeNvml([_proc(me + 1, 999 * MIB), _proc(me, 512 * MIB + MIB // 4)])
    r = nvml_process_memory(nvml_index=2, nvml=nvml)
    assert r.value_mib == pytest.approx(512.25) and r.reason is None
    assert nvml.calls == ["init", ("handle", 2), ("procs", "gpu2"), "shutdown"]


def test_nvml_explicit_pid() -> None:
    r = nvml_process_memory(pid=42, nvml=FakeNvml([_proc(42, 2 * MIB), _proc(os.getpid(), 8 * MIB)]))
    assert r.value_mib == 2.0


def test_nvml_none_used_memory() -> None:
    r = nvml_process_memory(nvml=FakeNvml([_proc(os.getpid(), None)]))
    assert r.value_mib is None and r.reason.startswith("unavailable:") and "usedGpuMemory" in r.reason


def test_nvml_pid_not_listed() -> None:
    r = nvml_process_memory(nvml=FakeNvml([_proc(os.getpid() + 1, MIB)]))
    assert r.value_mib is None and r.reason.startswith("unavailable:") and str(os.getpid()) in r.reason


@pytest.mark.parametrize("fail, text", [("init", "Driver Not Loaded"), ("handle", "Invalid Argument")])
def test_nvml_errors_give_unavailable_not_exception(fail: str, text: str) -> None:
    nvml = FakeNvml(fail=fail)
    r = nvml_process_memory(nvml=nvml)
    assert r.value_mib is None and r.reason.startswith("unavailable:") and text in r.reason
    if fail == "handle":
        assert nvml.calls[-1] == "shutdown"


def test_nvml_real_module_never_raises() -> None:
    r = nvml_process_memory()
    assert isinstance(r, MemoryReading)
    assert r.available or r.reason.startswith("unavailable:")


def test_nvml_index_mapping() -> None:
    assert nvml_index_for_cuda_device(1, env={}) == 1
    assert nvml_index_for_cuda_device(1, env={"CUDA_VISIBLE_DEVICES": "3,5"}) == 5
    assert nvml_index_for_cuda_device(0, env={"CUDA_VISIBLE_DEVICES": "GPU-abc"}) == 0


# -- CPU peak RSS --------------------------------------------------------------------------


def _status(rss_kb: int, hwm_kb: int) -> str:
    return f"Name:\tpython\nVmPeak:\t 9999999 kB\nVmHWM:\t {hwm_kb} kB\nVmRSS:\t {rss_kb} kB\n"


def test_cpu_peak_with_fake_proc(tmp_path: Path) -> None:
    clear_refs, status = tmp_path / "clear_refs", tmp_path / "status"
    clear_refs.write_text("")
    status.write_text(_status(rss_kb=204800, hwm_kb=900000))

    def run() -> None:
        assert clear_refs.read_text() == "5"  # reset happened before the run
        status.write_text(_status(rss_kb=204800, hwm_kb=307200))

    r = cpu_peak_rss(run, clear_refs_path=clear_refs, status_path=status)
    assert r.value_mib == pytest.approx(300.0)  # VmHWM after the reset, kB -> MiB
    assert r.detail == {"rss_before_mib": 200.0}
    assert r.reason is None


def test_cpu_peak_unwritable_clear_refs_is_unavailable(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(_status(1024, 999999))
    ran: list[bool] = []
    r = cpu_peak_rss(lambda: ran.append(True), clear_refs_path=tmp_path / "missing" / "clear_refs", status_path=status)
    assert r.value_mib is None and r.reason.startswith("unavailable:") and "clear_refs" in r.reason
    assert not ran  # never falls back to a whole-process high-water mark


def test_cpu_peak_missing_status(tmp_path: Path) -> None:
    r = cpu_peak_rss(lambda: None, clear_refs_path=tmp_path / "c", status_path=tmp_path / "nope")
    assert r.value_mib is None and "unavailable" in r.reason


def _real_clear_refs_writable() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _real_clear_refs_writable(), reason="needs Linux with a writable /proc/self/clear_refs")
def test_cpu_peak_real_proc_sees_a_transient_allocation() -> None:
    big = 96 * MIB

    def run() -> None:
        buf = bytearray(big)  # a fresh mmap may stay untouched zero pages: write every page
        buf[::4096] = b"\x01" * len(range(0, big, 4096))
        del buf

    r = cpu_peak_rss(run)
    assert r.value_mib is not None
    assert r.value_mib - r.detail["rss_before_mib"] >= 0.8 * big / MIB
    # a second, small run is not polluted by the first one's peak
    small = cpu_peak_rss(lambda: None)
    assert small.value_mib < r.value_mib - 0.5 * big / MIB


class _FakeLibc:
    """Records the allocator calls ``freed_memory_returned_to_os`` makes."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_allocator_thresholds_are_low_only_while_measuring(monkeypatch) -> None:
    """128 KiB thresholds + trim on entry; glibc's settled 32/64 MiB on exit, also when the
    measured run raises (a 128 KiB threshold left behind slows every later timing)."""
    fake = _FakeLibc()
    monkeypatch.setattr(memory, "_LIBC", fake)
    with pytest.raises(RuntimeError), memory.freed_memory_returned_to_os() as ok:
        assert ok and fake.calls == [("mallopt", -3, 128 * 1024), ("mallopt", -1, 128 * 1024), ("malloc_trim", 0)]
        raise RuntimeError("the run failed")
    assert fake.calls[3:] == [("mallopt", -3, 32 * MIB), ("mallopt", -1, 64 * MIB)]
    monkeypatch.setattr(memory, "_LIBC", False)  # no glibc: nothing to do, and it says so
    with memory.freed_memory_returned_to_os() as ok:
        assert ok is False


@pytest.mark.skipif(not _real_clear_refs_writable(), reason="needs Linux with a writable /proc/self/clear_refs")
def test_buffers_are_reused_again_after_a_memory_reading() -> None:
    """After a CPU peak reading, freed 2 MiB buffers come back from the heap instead of a
    fresh mmap each time (counted as page faults, not timed)."""
    import resource

    cpu_peak_rss(lambda: torch.ones(4 * MIB // 4).sum())
    torch.ones(MIB // 2).add_(1)  # first use may fault its pages in
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        torch.ones(MIB // 2).add_(1)  # 2 MiB, ~512 pages if freshly mapped
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 40 * 512 // 4, faults


@pytest.mark.skipif(not _real_clear_refs_writable(), reason="needs Linux with a writable /proc/self/clear_refs")
def test_cpu_peak_of_a_point_in_a_child_process() -> None:
    """The sweep's CPU reading: a child builds the point's model and reads one forward;
    a bigger batch needs more, and a failing child gives a reason, not an exception."""
    from tosa_bench.measure.cpu_peak import measure_cpu_peak
    from tosa_bench.measure.spec import Point

    small, big = (measure_cpu_peak(Point(model="test_deep", variant="tosa", options={"keep": 0.5}, batch_size=b), threads=1) for b in (1, 64))
    assert small.available and big.available, (small.reason, big.reason)
    rise = {b: r.value_mib - r.detail["rss_before_mib"] for b, r in ((1, small), (64, big))}
    assert 0 <= rise[1] < rise[64], rise
    assert "fresh process" in big.method
    bad = measure_cpu_peak(Point(model="test_deep", variant="dense", checkpoint="/nonexistent.pth"), threads=1)
    assert bad.value_mib is None and "no such file" in bad.reason and "\n" not in bad.reason


def test_cpu_peak_imports_neither_torch_nor_the_measuring_code() -> None:
    """The child pins glibc's thresholds before torch is imported, and point.py imports
    cpu_peak: so cpu_peak's module level may import neither (spec only, inside the child)."""
    import subprocess
    import sys

    code = ("import sys, tosa_bench.measure.cpu_peak; "
            "print(sorted(m for m in ('torch', 'tosa_bench.measure.point', 'tosa_bench.measure.spec') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
