"""``measure_point``'s record field by field, with fake timing and memory readers: the
identity fields and conventions, the phases it announces, the latency and memory fields
(the CPU reader and a faked CUDA device), the finite-output check and the NaN guard.
Written for the mutation check of ``measure/point.py`` (docs/mutation.md, seventh
sitting); the speed-up fields are checked in tests/test_timing.py."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import tosa_bench.measure.energy as energy
import tosa_bench.measure.memory as memory
import tosa_bench.measure.point as point_mod
import tosa_bench.measure.timing as timing
from tosa_bench.build import build_model
from tosa_bench.kernels import selector_cpu
from tosa_bench.measure.memory import MemoryReading
from tosa_bench.measure.compiled import COMPILE_CONVENTION
from tosa_bench.measure.point import measure_point
from tosa_bench.measure.energy import ENERGY_CONVENTION, ENERGY_FIELDS
from tosa_bench.measure.spec import MAC_CONVENTION, NonFiniteOutput, Point, Settings
from tosa_bench.measure.timing import PairedStats, TimingStats

TINY_SIZE = 32  # test_tiny: 32 px images, 3 heads (models/configs.py)


def _fake_paired(step_a, step_b, timer, **kw) -> PairedStats:
    """Dense 2 ms and the variant 1 ms in every round: a speed-up of exactly 2."""
    a = TimingStats((0.002,) * 6, 1, 0.002, 6, False, "fake", 1)
    b = TimingStats((0.001,) * 6, 1, 0.001, 6, False, "fake", 1)
    return PairedStats(a, b, (2.0,) * 6)


class Recorder:
    """Fake latency and CPU-memory readers that remember how they were called."""

    def __init__(self, cpu_reading: MemoryReading) -> None:
        self.latency: list[tuple] = []
        self.cpu: list[tuple] = []
        self.cpu_reading = cpu_reading

    def measure_latency(self, model, img_size, device, dtype, warmup, repeats, time_budget_s, compile):
        self.latency.append((type(model).__name__, img_size, device, dtype, warmup, repeats, time_budget_s, compile))
        return {"latency_ms_p50": 3.5, "latency_ms_p90": 4.25, "latency_ms_p10": 1.0}

    def measure_throughput(self, model, batch_size, img_size, device, dtype, warmup, repeats, time_budget_s, compile):
        return {"images_per_s": 100.0, "images_per_s_low": 80.0, "images_per_s_high": 125.0, "step_time_s_median": 0.02,
                "step_time_s_p10": 0.017, "step_time_s_p90": 0.024, "repeats": repeats, "warmup_steps": warmup, "timer": "fake"}

    def measure_cpu_peak(self, point, threads):
        self.cpu.append((point, threads))
        return self.cpu_reading


@pytest.fixture
def fakes(monkeypatch) -> Recorder:
    rec = Recorder(MemoryReading(130.0, "VmHWM (fake)", None, {"rss_before_mib": 100.0}))
    monkeypatch.setattr(timing, "measure_paired", _fake_paired)
    monkeypatch.setattr(timing, "measure_latency", rec.measure_latency)
    monkeypatch.setattr(timing, "measure_throughput", rec.measure_throughput)
    monkeypatch.setattr(point_mod, "measure_cpu_peak", rec.measure_cpu_peak)
    monkeypatch.setattr(energy, "open_counter", lambda device: (None, "unavailable: fake"))
    return rec


def test_the_record_of_a_tosa_point_written_out(fakes) -> None:
    point = Point("test_tiny", "tosa", {"placement": (1, 3), "keep": 0.5}, batch_size=3, device="cpu")
    stages: list[str] = []
    rec = measure_point(point, Settings(warmup=2, repeats=5, time_budget_s=8.0), stage=stages.append)

    assert stages == ["build", "count", "check", "throughput", "energy", "latency", "memory"]
    assert {k: rec[k] for k in ("model", "variant", "keep", "options", "resolved_options", "batch_size", "dtype", "device",
                                "checkpoint", "selector", "compile", "conventions")} == {
        "model": "test_tiny", "variant": "tosa", "keep": 0.5,
        "options": {"keep": 0.5, "placement": [1, 3]},  # sorted keys, lists for tuples
        "resolved_options": {"keep": 0.5, "placement": [1, 3], "importance": "mean", "selector_hidden": 6, "selector_kernel": 3},
        "batch_size": 3, "dtype": "fp32", "device": "cpu", "checkpoint": None, "selector": None, "compile": False,
        "conventions": {"compile": COMPILE_CONVENTION, "gmacs": MAC_CONVENTION, "throughput": "images/s, median step", "latency": "ms, batch 1", "memory": "MiB",
                        "energy": ENERGY_CONVENTION},
    }
    # no counter (faked): every energy field there, None, with the opener's reason
    assert {k: rec[k] for k in ENERGY_FIELDS} == {**{k: None for k in ENERGY_FIELDS}, "energy_reason": "unavailable: fake"}
    assert list(rec["options"]) == ["keep", "placement"]
    assert rec["threads"] == torch.get_num_threads()
    # the check's forward settled two chunk budgets, each named by its shape: the map
    # block's attention and the two selectors' (one shape)
    # (and, where the kernel ran, its vector width; also where the selector's calibration
    # timed the kernel as a candidate in this process. Which candidate wins is timing: under
    # load PyTorch ops can, and a calibration an earlier test made is then read back
    # without timing the kernel again, so the width is only certain where the kernel ran)
    chunks = rec["cpu_chunks"]
    widths = [k for k in chunks if k.startswith("selector-kernel heads 3 hidden 6 kernel 3 rows 17 keys 17 | ")]
    ran_kernel = rec["kernel_paths"][0].startswith("fused CPU kernel")
    assert (len(widths) == 1) if ran_kernel else (len(widths) <= (selector_cpu.kernel() is not None))
    assert len(chunks) == 2 + len(widths)
    assert sum("attention heads 3 tokens 17" in k for k in chunks) == 1
    assert sum("selector heads 3 hidden 6 kernel 3 rows 17 keys 17" in k for k in chunks) == 1
    assert all(set(v) == {"bytes", "source", "fallback"} for v in chunks.values())
    # and the selectors ran one CPU way, named (the kernel where it is built, else PyTorch ops)
    assert len(rec["kernel_paths"]) == 1 and rec["kernel_paths"][0] in {"fused CPU kernel (32-byte vectors)", "fused CPU kernel (64-byte vectors)",
                                                                         "PyTorch ops in one piece", "PyTorch ops in chunks"}
    assert rec["speedup_paired"] == 2.0 and rec["speedup_efficiency"] == pytest.approx(2.0 / rec["speedup_ideal"], rel=1e-12)
    # latency: batch 1 at the point's size, dtype and device, the settings' steps, half the budget
    assert fakes.latency == [("VisionTransformer", TINY_SIZE, "cpu", "fp32", 2, 5, 4.0, None)]  # None: eager
    assert (rec["latency_ms_p50"], rec["latency_ms_p90"]) == (3.5, 4.25) and "latency_ms_p10" not in rec
    # CPU memory: the child's high-water mark minus the RSS before the forward
    assert fakes.cpu == [(point, torch.get_num_threads())]
    assert {k: rec[k] for k in ("peak_mem_mb", "peak_mem_method", "gpu_peak_alloc_mib", "nvml_process_mib", "nvml_reason",
                                "cpu_peak_rss_mib", "cpu_peak_reason")} == {
        "peak_mem_mb": 30.0, "peak_mem_method": "VmHWM (fake) minus RSS before the forward (MiB)", "gpu_peak_alloc_mib": None,
        "nvml_process_mib": None, "nvml_reason": "no CUDA device", "cpu_peak_rss_mib": 130.0, "cpu_peak_reason": None,
    }
    assert "timing_reason" not in rec


def test_latency_without_a_budget_and_a_dense_point_keeps_no_keep(fakes, monkeypatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda m, *a, **k: m)
    rec = measure_point(Point("test_tiny", "dense", batch_size=2, dtype="bf16", device="cpu", compile=True),
                        Settings(warmup=1, repeats=3, memory=False, paired=False), model=build_model("test_tiny"))
    assert fakes.latency == [("VisionTransformer", TINY_SIZE, "cpu", "bf16", 1, 3, None, "default")]  # true: the default mode
    assert rec["keep"] is None and rec["resolved_options"] == {} and rec["compile"] == "default" and rec["dtype"] == "bf16"
    assert rec["kernel_paths"] == []  # dense has no module that runs more than one way


@pytest.mark.parametrize("settings,stages,present", [
    (Settings(timing=False, latency=True, memory=False), ["build", "count", "check"], set()),
    (Settings(timing=True, latency=False, memory=False, warmup=1, repeats=3), ["build", "count", "check", "throughput", "energy"], {"throughput_img_s"}),
    (Settings(timing=True, latency=False, memory=False, energy=False, warmup=1, repeats=3), ["build", "count", "check", "throughput"], {"throughput_img_s"}),
    (Settings(timing=False, memory=True), ["build", "count", "check", "memory"], {"peak_mem_mb"}),
])
def test_phases_left_out_leave_their_fields_none(fakes, settings, stages, present) -> None:
    seen: list[str] = []
    rec = measure_point(Point("test_tiny", "random", {"keep": 0.5}, batch_size=2, device="cpu"), settings, stage=seen.append)
    assert seen == stages
    for key in ("throughput_img_s", "latency_ms_p50", "peak_mem_mb"):
        assert (rec[key] is not None) == (key in present), key
    assert fakes.latency == []
    assert ("speedup_efficiency" in rec) == settings.timing
    assert rec.get("timing_reason") == (None if settings.timing else "not measured (--no-timing)")
    # the energy fields are on every record; why they are empty follows the settings
    assert all(rec[k] is None for k in ENERGY_FIELDS if k != "energy_reason")
    assert rec["energy_reason"] == ("unavailable: fake" if settings.timing and settings.energy
                                    else "not measured (energy = false)" if not settings.energy
                                    else "not measured (energy needs the timing phase: timing = false / --no-timing)")


def test_a_model_handed_in_is_measured_instead_of_a_new_one(fakes, monkeypatch) -> None:
    def no_build(point):
        raise AssertionError("measure_point built a model it was given")

    def memory(model, point, device):
        seen.append(("memory", model, device))
        return {"peak_mem_mb": 1.0}

    monkeypatch.setattr(point_mod, "build_point_model", no_build)
    monkeypatch.setattr(point_mod, "_memory", memory)
    model = build_model("test_tiny", "random", keep=0.5)
    seen: list[tuple] = []
    real_to = model.to
    model.to = lambda *a, **k: seen.append(("to", a, k)) or real_to(*a, **k)  # the model is moved to the point's device
    rec = measure_point(Point("test_tiny", "random", {"keep": 0.5}, batch_size=2, device="cpu"), Settings(timing=False), model=model)
    assert rec["resolved_options"] == {"keep": 0.5, "placement": [1, 3, 5], "seed": 0}
    assert seen == [("to", ("cpu",), {}), ("memory", model, "cpu")]  # the memory reader gets the same model (CUDA runs it)


@pytest.mark.parametrize("field", ["gmacs", "throughput_img_s"])
def test_a_nan_measurement_is_refused(fakes, monkeypatch, field) -> None:
    real_count = point_mod.count_point
    monkeypatch.setattr(point_mod, "count_point", lambda model: {**real_count(model), "gmacs": float("nan") if field == "gmacs" else 0.5})
    monkeypatch.setattr(point_mod, "_throughput", lambda *a: {"throughput_img_s": float("nan") if field == "throughput_img_s" else 10.0})
    with pytest.raises(NonFiniteOutput, match="^a measurement came out NaN$"):
        measure_point(Point("test_tiny", "random", {"keep": 0.5}, batch_size=2, device="cpu"), Settings(latency=False, memory=False))


# --- the finite-output check ----------------------------------------------------------------


class Fixed(torch.nn.Module):
    """Returns a given output and remembers its inputs, whether inference mode was on,
    and the autocast it ran under."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(img_size=TINY_SIZE)
        self.out, self.inputs, self.inference = out, [], []

    def forward(self, x):
        self.inputs.append(x)
        self.inference.append(torch.is_inference_mode_enabled())
        return self.out


@pytest.fixture
def autocasts(monkeypatch) -> list[tuple]:
    seen: list[tuple] = []

    def recording(dtype, device):
        seen.append((dtype, device))
        return contextlib.nullcontext()

    monkeypatch.setattr(point_mod, "autocast", recording)
    return seen


@pytest.mark.parametrize("batch,images", [(5, 2), (1, 1)])
def test_the_finite_check_runs_up_to_two_seeded_images_in_inference_mode_under_the_dtype(autocasts, batch, images) -> None:
    model = Fixed(torch.ones(images, 10))
    point_mod._check_finite(model, Point("test_tiny", "tosa", batch_size=batch, dtype="bf16"), "cpu")
    expected = torch.randn(images, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    assert len(model.inputs) == 1 and torch.equal(model.inputs[0], expected)
    assert model.inference == [True] and autocasts == [("bf16", "cpu")]


def test_the_finite_check_runs_on_the_points_device(autocasts) -> None:
    model = Fixed(torch.ones(2, 10))
    point_mod._check_finite(model, Point("test_tiny", "tosa", batch_size=2), "meta")
    assert model.inputs[0].device.type == "meta" and model.inputs[0].shape == (2, 3, TINY_SIZE, TINY_SIZE)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_finite_check_refuses_any_nan_or_inf_and_names_the_point(autocasts, bad) -> None:
    out = torch.ones(2, 10)
    out[1, 7] = bad
    with pytest.raises(NonFiniteOutput, match=r"^non-finite output \(NaN/Inf\) from test_tiny/evit in bf16$"):
        point_mod._check_finite(Fixed(out), Point("test_tiny", "evit", batch_size=4, dtype="bf16"), "cpu")


# --- the memory fields ----------------------------------------------------------------------


@pytest.mark.parametrize("reading,peak,method", [
    (MemoryReading(None, "VmHWM (fake)", "unavailable: the measuring process failed: boom"), None,
     "unavailable: the measuring process failed: boom"),
    (MemoryReading(90.0, "VmHWM (fake)", None, {}), None, None),  # no level before the forward: no rise
    (MemoryReading(90.5, "VmHWM (fake)", None, {"rss_before_mib": 90.5}), 0.0, "VmHWM (fake) minus RSS before the forward (MiB)"),
])
def test_cpu_memory_fields_when_the_reader_has_less_to_say(monkeypatch, reading, peak, method) -> None:
    calls: list[int] = []
    monkeypatch.setattr(point_mod, "measure_cpu_peak", lambda point, threads: calls.append(threads) or reading)
    out = point_mod._memory(Fixed(torch.ones(1)), Point("test_tiny", "tosa", batch_size=2), "cpu")
    assert calls == [torch.get_num_threads()]
    assert out == {"peak_mem_mb": peak, "peak_mem_method": method, "gpu_peak_alloc_mib": None, "nvml_process_mib": None,
                   "nvml_reason": "no CUDA device", "cpu_peak_rss_mib": reading.value_mib, "cpu_peak_reason": reading.reason}


@pytest.mark.parametrize("device,nvml_device", [("cuda", 0), ("cuda:1", 1)])
def test_gpu_memory_fields_from_faked_cuda_readers(monkeypatch, autocasts, device, nvml_device) -> None:
    """The CUDA branch on a CPU: the images, the allocator reader and NVML are faked; the
    forward must run the point's batch under inference mode and its dtype, inside the
    allocator reader's window, and NVML must be read for the same card."""
    seen: dict[str, Any] = {}
    images = torch.zeros(4, 3, TINY_SIZE, TINY_SIZE)

    def fake_images(count, size, dev):
        seen["images"] = (count, size, dev)
        return images

    def fake_gpu_peak(forward, device):
        seen["window"] = device
        forward()
        return MemoryReading(42.5, "torch.cuda.max_memory_allocated")

    monkeypatch.setattr(point_mod, "_images", fake_images)
    monkeypatch.setattr(memory, "gpu_peak_tensor_memory", fake_gpu_peak)
    monkeypatch.setattr(memory, "nvml_index_for_cuda_device", lambda i: seen.setdefault("cuda_index", i) + 10)
    monkeypatch.setattr(memory, "nvml_process_memory", lambda idx: seen.setdefault("nvml", idx) and MemoryReading(300.0, "nvml", "shared card"))
    model = Fixed(torch.ones(4, 10))
    out = point_mod._memory(model, Point("test_tiny", "tosa", batch_size=4, dtype="fp16", device=device), device)

    dev = torch.device(device)
    assert seen == {"images": (4, TINY_SIZE, dev), "window": dev, "cuda_index": nvml_device, "nvml": nvml_device + 10}
    assert len(model.inputs) == 1 and model.inputs[0] is images and model.inference == [True]
    assert autocasts == [("fp16", dev)]
    assert out == {"peak_mem_mb": 42.5, "peak_mem_method": "torch.cuda.max_memory_allocated (MiB, tensors only, incl. weights and inputs)",
                   "gpu_peak_alloc_mib": 42.5, "nvml_process_mib": 300.0, "nvml_reason": "shared card",
                   "cpu_peak_rss_mib": None, "cpu_peak_reason": "measured on the GPU"}


def test_images_are_the_same_seeded_draw_on_every_call() -> None:
    a, b = point_mod._images(3, 8, "cpu"), point_mod._images(3, 8, torch.device("cpu"))
    assert a.shape == (3, 3, 8, 8) and torch.equal(a, b)
    assert torch.equal(a, torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert not math.isclose(a.std().item(), 0.0)
    assert point_mod._images(3, 8, "meta").device.type == "meta"  # moved to the device asked for


def test_the_dense_twin_and_the_timed_images_go_to_the_points_device(monkeypatch) -> None:
    """On a GPU the dense twin and the images must be moved to the point's device; on the
    CPU a move that is left out changes nothing, so the moves are watched."""
    moves: list[tuple] = []
    real_build, real_images = point_mod.build_model, point_mod._images

    def build(name, variant="dense", **kw):
        net = real_build(name, variant, **kw)
        real_to = net.to
        net.to = lambda *a, **k: moves.append((variant, "to", a)) or real_to(*a, **k)
        return net

    def images(count, size, device):
        moves.append(("images", count, device))
        return real_images(count, size, device)

    monkeypatch.setattr(point_mod, "build_model", build)
    monkeypatch.setattr(point_mod, "_images", images)
    monkeypatch.setattr(timing, "measure_paired", _fake_paired)
    measure_point(Point("test_tiny", "random", {"keep": 0.5}, batch_size=3, device="cpu"), Settings(latency=False, memory=False))
    assert ("dense", "to", ("cpu",)) in moves and ("images", 3, torch.device("cpu")) in moves
