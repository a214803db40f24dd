"""Timing statistics and budget logic on a fake clock; a short real CPU run; the CUDA
event timer against a fake torch.cuda."""

from __future__ import annotations

import statistics
from typing import Any, Callable, Iterable

import numpy as np
import pytest
import torch
from torch import nn

from tosa_bench.measure.timing import (
    CudaEventTimer,
    PerfCounterTimer,
    TimingStats,
    default_timer,
    measure,
    measure_latency,
    measure_throughput,
)


class FakeTimer:
    """Returns the programmed durations (seconds) one per step; counts the steps run."""

    name = "fake"

    def __init__(self, durations: Iterable[float]) -> None:
        self._durations = iter(durations)
        self.calls = 0

    def time(self, step_fn: Callable[[], Any]) -> float:
        step_fn()
        self.calls += 1
        return next(self._durations)


def _stats(times: list[float]) -> TimingStats:
    return measure(lambda: None, warmup=0, repeats=len(times), timer=FakeTimer(times))


def test_warmup_is_run_but_excluded() -> None:
    steps: list[int] = []
    timer = FakeTimer([100.0, 50.0] + [0.1, 0.2, 0.3])
    s = measure(lambda: steps.append(1), warmup=2, repeats=3, timer=timer)
    assert len(steps) == 5 and timer.calls == 5
    assert s.step_times_s == (0.1, 0.2, 0.3)
    assert s.warmup_steps == 2 and s.warmup_time_s == 150.0
    assert s.max_s == 0.3 and not s.stopped_by_budget
    assert s.timer == "fake" and s.num_threads == torch.get_num_threads()


def test_statistics_match_numpy() -> None:
    times = [0.013, 0.010, 0.011, 0.020, 0.012, 0.010, 0.014, 0.011, 0.050, 0.012]
    s = _stats(times)
    assert s.median_s == pytest.approx(np.median(times))
    assert s.mean_s == pytest.approx(statistics.fmean(times))
    assert (s.min_s, s.max_s) == (0.010, 0.050)
    assert s.p10_s == pytest.approx(np.percentile(times, 10))
    assert s.p90_s == pytest.approx(np.percentile(times, 90))
    assert s.iqr_s == pytest.approx(np.percentile(times, 75) - np.percentile(times, 25))
    assert s.latency_ms_p50 == pytest.approx(1e3 * np.median(times))
    assert s.latency_ms_p90 == pytest.approx(1e3 * np.percentile(times, 90))
    assert s.repeats == 10 and s.step_times_s == tuple(times)  # order kept


def test_throughput_from_median_with_spread() -> None:
    s = _stats([0.5, 0.25, 1.0])
    tp = s.throughput(64)
    assert tp.images_per_s == pytest.approx(64 / 0.5)
    assert tp.images_per_s_low == pytest.approx(64 / 1.0)
    assert tp.images_per_s_high == pytest.approx(64 / 0.25)
    with pytest.raises(ValueError):
        s.throughput(0)


def test_budget_stops_timed_phase_early() -> None:
    timer = FakeTimer([1.0] * 100)
    s = measure(lambda: None, warmup=2, repeats=40, timer=timer, time_budget_s=10.0)
    # warm-up: the 2 requested steps (2 s) stay under its 25% share (2.5 s)
    assert s.warmup_steps == 2
    assert s.repeats == 8  # 2 s warm-up + 8 s timed = budget
    assert s.stopped_by_budget and s.requested_repeats == 40


def test_budget_always_keeps_min_repeats() -> None:
    timer = FakeTimer([30.0] * 100)
    s = measure(lambda: None, warmup=10, repeats=40, timer=timer, time_budget_s=5.0, min_repeats=3)
    assert s.warmup_steps == 1  # the first warm-up step already exhausts the budget
    assert s.repeats == 3 and s.stopped_by_budget
    assert timer.calls == 4


def test_budget_caps_warmup() -> None:
    timer = FakeTimer([1.0] * 100)
    s = measure(lambda: None, warmup=50, repeats=5, timer=timer, time_budget_s=20.0)
    assert s.warmup_steps == 5  # 25% of 20 s
    assert s.repeats == 5 and not s.stopped_by_budget


def test_min_repeats_never_exceeds_repeats() -> None:
    s = measure(lambda: None, warmup=0, repeats=2, timer=FakeTimer([9.0] * 5), time_budget_s=1.0)
    assert s.repeats == 2


@pytest.mark.parametrize("kwargs", [dict(warmup=-1, repeats=3), dict(warmup=0, repeats=0)])
def test_measure_rejects_bad_counts(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        measure(lambda: None, timer=FakeTimer([1.0]), **kwargs)
    with pytest.raises(ValueError):
        measure(lambda: None, 0, 3, FakeTimer([1.0]), time_budget_s=0)


def test_perf_counter_timer_uses_injected_clock() -> None:
    ticks = iter([10.0, 10.25])
    timer = PerfCounterTimer(clock=lambda: next(ticks))
    ran: list[bool] = []
    assert timer.time(lambda: ran.append(True)) == pytest.approx(0.25)
    assert ran == [True]


class _FakeEvent:
    def __init__(self, log: list[str], clock: list[float], enable_timing: bool = False) -> None:
        assert enable_timing
        self.log, self.clock, self.t = log, clock, None

    def record(self, stream: Any = None) -> None:
        assert stream == "stream0"
        self.log.append("record")
        self.t = self.clock[0]

    def synchronize(self) -> None:
        self.log.append("event_sync")

    def elapsed_time(self, end: "_FakeEvent") -> float:
        return (end.t - self.t) * 1e3  # milliseconds, as CUDA events report


class FakeCuda:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.clock = [0.0]

    def Event(self, enable_timing: bool = False) -> _FakeEvent:
        return _FakeEvent(self.log, self.clock, enable_timing)

    def current_stream(self, device: Any = None) -> str:
        return "stream0"

    def synchronize(self, device: Any = None) -> None:
        self.log.append("sync")


def test_cuda_event_timer_with_fake_cuda() -> None:
    cuda = FakeCuda()

    def step() -> None:
        cuda.log.append("step")
        cuda.clock[0] += 0.004

    t = CudaEventTimer("cuda:0", cuda=cuda).time(step)
    assert t == pytest.approx(0.004)  # ms -> s
    assert cuda.log == ["sync", "record", "step", "record", "event_sync"]


def test_default_timer_by_device() -> None:
    assert isinstance(default_timer("cpu"), PerfCounterTimer)
    assert isinstance(default_timer("cuda:0"), CudaEventTimer)
    with pytest.raises(ValueError):
        default_timer("meta")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 4, stride=4)
        self.seen: list[tuple[torch.dtype, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.seen.append((y.dtype, torch.is_inference_mode_enabled(), self.training))
        return y


def test_measure_throughput_on_cpu_real_clock() -> None:
    model = Tiny().train()
    r = measure_throughput(model, batch_size=4, img_size=16, device="cpu", warmup=2, repeats=5)
    assert r["timer"] == "perf_counter" and r["repeats"] == 5 and r["warmup_steps"] == 2
    assert r["images_per_s"] == pytest.approx(4 / r["step_time_s_median"])
    assert r["images_per_s_low"] <= r["images_per_s"] <= r["images_per_s_high"]
    assert r["num_threads"] == torch.get_num_threads()
    assert (r["batch_size"], r["img_size"], r["dtype"], r["device"]) == (4, [16, 16], "fp32", "cpu")
    assert len(model.seen) == 7 and all(s == (torch.float32, True, False) for s in model.seen)


def test_measure_latency_fake_timer_and_bf16_autocast() -> None:
    model = Tiny()
    timer = FakeTimer([1.0] + [0.002, 0.004, 0.003, 0.010])
    r = measure_latency(model, img_size=(8, 16), device="cpu", dtype="bf16", warmup=1, repeats=4, timer=timer)
    assert r["batch_size"] == 1 and r["img_size"] == [8, 16]
    assert r["latency_ms_p50"] == pytest.approx(3.5)
    assert r["latency_ms_p90"] == pytest.approx(1e3 * np.percentile([0.002, 0.004, 0.003, 0.010], 90))
    assert model.seen[-1][0] == torch.bfloat16  # ran under CPU bf16 autocast


def test_dtype_validation() -> None:
    with pytest.raises(ValueError, match="fp16.*CPU"):
        measure_throughput(Tiny(), 2, 16, "cpu", dtype="fp16", timer=FakeTimer([]))
    with pytest.raises(ValueError, match="dtype"):
        measure_throughput(Tiny(), 2, 16, "cpu", dtype="int8", timer=FakeTimer([]))


def test_compile_forces_a_warmup_step(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[nn.Module] = []

    def fake_compile(model: nn.Module) -> nn.Module:
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    r = measure_throughput(Tiny(), 2, 16, "cpu", warmup=0, repeats=3, compile=True, timer=FakeTimer([5.0, 1, 1, 1]))
    assert compiled and r["compile"] is True
    assert r["warmup_steps"] == 1 and r["step_times_s"] == [1, 1, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU: real CUDA-event timing")
def test_measure_throughput_on_gpu() -> None:
    r = measure_throughput(Tiny(), 8, 32, "cuda", dtype="fp16", warmup=2, repeats=5)
    assert r["timer"] == "cuda_events" and r["images_per_s"] > 0


def test_paired_rounds_alternate_and_cancel_drift() -> None:
    from tosa_bench.measure.timing import measure_paired

    order: list[str] = []
    # The machine slows down 2x after the first round; B is always 1.25x faster than A.
    durations = [9, 1.0, 1.0, 9, 0.8, 0.8, 2.0, 2.0, 1.6, 1.6, 2.0, 2.0, 1.6, 1.6]
    timer = FakeTimer(durations)
    pair = measure_paired(lambda: order.append("a"), lambda: order.append("b"), timer, warmup=1, steps_per_round=2, max_rounds=3)
    assert "".join(order) == "aaabbbaabbaabb"  # warm-up + 2 timed each, then alternating pairs
    assert pair.a.repeats == pair.b.repeats == 6 and pair.a.warmup_steps == 1
    assert pair.round_ratios == pytest.approx((1.25, 1.25, 1.25))
    assert pair.speedup == pytest.approx(1.25)


def test_paired_budget_keeps_min_rounds() -> None:
    from tosa_bench.measure.timing import measure_paired

    pair = measure_paired(lambda: None, lambda: None, FakeTimer([1.0] * 100), warmup=0, steps_per_round=1, max_rounds=10, min_rounds=2, time_budget_s=0.5)
    assert len(pair.round_ratios) == 2 and pair.a.stopped_by_budget


def test_paired_warmup_is_budgeted() -> None:
    """With a budget, a slow model's 10 warm-up steps stop after one step once 1/8 of the
    budget is used (half the budget per variant, a quarter of that for warm-up), while the
    first round still times its full steps."""
    from tosa_bench.measure.timing import measure_paired

    order: list[str] = []
    pair = measure_paired(lambda: order.append("a"), lambda: order.append("b"), FakeTimer([2.0] * 100), warmup=10, steps_per_round=2,
                          max_rounds=10, min_rounds=2, time_budget_s=12.0)
    assert pair.a.warmup_steps == pair.b.warmup_steps == 1
    assert "".join(order) == "aaabbbaabb" and len(pair.round_ratios) == 2
    unbudgeted = measure_paired(lambda: None, lambda: None, FakeTimer([2.0] * 100), warmup=10, steps_per_round=2, max_rounds=1)
    assert unbudgeted.a.warmup_steps == 10
