"""environment_record: the fields are there, and missing GPU / NVML / git give None plus a
reason instead of an error."""

from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

import tosa_bench
from tosa_bench.kernels import selector_triton
from tosa_bench.measure.env import cpu_model, environment_record, git_state

KEYS = {
    "tosa_bench_version", "python", "platform", "hostname", "time_utc", "torch", "cuda", "cudnn",
    "cuda_available", "device", "device_name", "driver_version", "cpu_model", "logical_cpus",
    "usable_cpus", "torch_threads", "git_commit", "git_dirty",
}  # fmt: skip


class FakeCuda:
    def __init__(self, available: bool) -> None:
        self.available = available

    def is_available(self) -> bool:
        return self.available

    def get_device_name(self, device: Any = None) -> str:
        return "NVIDIA H100 80GB HBM3"


class FakeNvml:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def nvmlInit(self) -> None:
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.54.15"

    def nvmlShutdown(self) -> None:
        pass


def test_cpu_record_is_complete_and_json(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n")
    rec = environment_record("cpu", cuda=FakeCuda(False), cpuinfo_path=cpuinfo)
    assert KEYS <= set(rec)
    json.dumps(rec)
    assert rec["cpu_model"] == rec["device_name"] == "AMD EPYC 7B13 64-Core Processor"
    assert rec["device"] == "cpu" and rec["cuda_available"] is False
    assert rec["driver_version"] is None and rec["driver_version_reason"]
    assert rec["torch"] == torch.__version__ and rec["tosa_bench_version"] == tosa_bench.__version__
    assert rec["python"] == platform.python_version()
    assert rec["torch_threads"] == torch.get_num_threads() and rec["logical_cpus"] >= 1
    assert dt.datetime.fromisoformat(rec["time_utc"]).utcoffset() == dt.timedelta(0)
    # ToSA's fused CPU selector: its build, or None and why
    from tosa_bench.kernels import selector_cpu

    assert rec["selector_cpu_kernel"] == selector_cpu.build_tag()
    assert (rec["selector_cpu_kernel"] is None) == ("selector_cpu_kernel_reason" in rec)


def test_default_device_without_cuda_is_cpu() -> None:
    assert environment_record(cuda=FakeCuda(False))["device"] == "cpu"


def test_cuda_device_without_gpu_has_reasons() -> None:
    rec = environment_record("cuda", cuda=FakeCuda(False), nvml=FakeNvml())
    assert rec["device_name"] is None and rec["device_name_reason"] == "no CUDA device"
    assert rec["driver_version"] is None and rec["driver_version_reason"] == "no CUDA device"


def test_cuda_device_with_fake_gpu_and_nvml() -> None:
    rec = environment_record(cuda=FakeCuda(True), nvml=FakeNvml())
    assert rec["device"] == "cuda" and rec["device_name"] == "NVIDIA H100 80GB HBM3"
    assert rec["driver_version"] == "550.54.15"
    # ToSA's GPU selector kernel: its Triton version, or None and why
    kernel, reason = selector_triton.version_or_reason()
    assert rec["selector_gpu_kernel"] == kernel and rec.get("selector_gpu_kernel_reason") == reason
    assert (kernel is None) != (reason is None)
    rec = environment_record("cuda:0", cuda=FakeCuda(True), nvml=FakeNvml(fail=True))
    assert rec["driver_version"] is None and "NVML" in rec["driver_version_reason"]


def test_cpu_model_fallback(tmp_path: Path) -> None:
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n\nModel\t: Raspberry Pi 4 Model B\n")
    assert cpu_model(arm) == "Raspberry Pi 4 Model B"
    assert cpu_model(tmp_path / "missing") == (platform.processor() or None)


def test_git_state_outside_a_checkout(tmp_path: Path) -> None:
    state = git_state(tmp_path)
    assert state["git_commit"] is None and state["git_dirty"] is None and state["git_reason"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")
def test_git_state_in_a_fresh_repo(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    assert git_state(tmp_path)["git_commit"] is None  # no commit yet: reason, no error
    (tmp_path / "a.txt").write_text("x")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    state = git_state(tmp_path)
    assert len(state["git_commit"]) == 40 and state["git_dirty"] is False
    (tmp_path / "a.txt").write_text("y")
    assert git_state(tmp_path)["git_dirty"] is True


def test_git_missing_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert git_state(tmp_path)["git_reason"] == "git not installed"
