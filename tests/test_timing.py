"""Timing statistics and budget logic on a fake clock; a short real CPU run; the CUDA
event timer against a fake torch.cuda."""

from __future__ import annotations

import math

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


class SideTimer:
    """A fake timer that knows which side ran: each step function appends its name to
    ``order``; the duration is ``times[side][k]`` for that side's k-th call (warm-up
    included), so tests program each side's clock on its own."""

    name = "fake"

    def __init__(self, order: list[str], times: dict[str, list[float]]) -> None:
        self.order, self.times, self.count = order, times, {"a": 0, "b": 0}

    def time(self, step_fn: Callable[[], Any]) -> float:
        step_fn()
        side = self.order[-1]
        t = self.times[side][self.count[side]]
        self.count[side] += 1
        return t


def _pair(order: list[str]):
    return (lambda: order.append("a")), (lambda: order.append("b"))


def test_paired_protocol_interleaves_warmup_and_alternates_abba() -> None:
    from tosa_bench.measure.timing import measure_paired

    order: list[str] = []
    timer = SideTimer(order, {"a": [1.0] * 20, "b": [0.8] * 20})
    pair = measure_paired(*_pair(order), timer, warmup=2, steps_per_round=2, min_rounds=4, max_rounds=4, target_halfwidth=0.0)
    # warm-up a,b,a,b; then rounds AB, BA, AB, BA with 2 steps each
    assert "".join(order) == "abab" + "aabb" + "bbaa" + "aabb" + "bbaa"
    assert pair.a.warmup_steps == pair.b.warmup_steps == 2 and pair.a.repeats == pair.b.repeats == 8
    assert pair.round_ratios == pytest.approx((1.25,) * 4)


def test_paired_speedup_is_the_median_of_round_ratios_not_of_overall_medians() -> None:
    """Drift: round 2 runs on a 10x slower machine, round 3 catches B in a fast spell. Per
    round B is 1.25x, 1.25x, 2x faster: the median of the round ratios is 1.25, while the
    ratio of the overall medians (A: 1, 2, 10 -> 2; B: 0.8, 1, 8 -> 1) would say 2.0."""
    from tosa_bench.measure.timing import measure_paired

    order: list[str] = []
    timer = SideTimer(order, {"a": [1.0, 10.0, 2.0], "b": [0.8, 8.0, 1.0]})
    pair = measure_paired(*_pair(order), timer, warmup=0, steps_per_round=1, min_rounds=3, max_rounds=3, target_halfwidth=0.0)
    assert pair.round_ratios == pytest.approx((1.25, 1.25, 2.0))
    assert pair.speedup == pytest.approx(1.25)
    assert pair.a.median_s / pair.b.median_s == pytest.approx(2.0)  # what the wrong combination gives


def test_paired_stops_early_once_the_interval_is_narrow() -> None:
    from tosa_bench.measure.timing import measure_paired

    order: list[str] = []
    steady = measure_paired(*_pair(order), SideTimer(order, {"a": [1.0] * 40, "b": [0.5] * 40}), warmup=0, min_rounds=6, max_rounds=20)
    assert len(steady.round_ratios) == 6 and steady.interval[:2] == (2.0, 2.0) and not steady.noisy(0.05)
    order2: list[str] = []
    jitter = [1.0, 1.3, 0.8, 1.2, 0.9, 1.4, 0.7, 1.1] * 5
    noisy = measure_paired(*_pair(order2), SideTimer(order2, {"a": jitter, "b": [1.0] * 40}), warmup=0, min_rounds=6, max_rounds=8)
    assert len(noisy.round_ratios) == 8 and noisy.noisy(0.05)


def test_paired_budget_keeps_min_rounds() -> None:
    from tosa_bench.measure.timing import measure_paired

    pair = measure_paired(lambda: None, lambda: None, FakeTimer([1.0] * 100), warmup=0, steps_per_round=1, max_rounds=10, min_rounds=2,
                          time_budget_s=0.5, target_halfwidth=-1)
    assert len(pair.round_ratios) == 2 and pair.a.stopped_by_budget


def test_paired_warmup_is_budgeted() -> None:
    """With a budget, warm-up stops after one step of each once a quarter of it is used."""
    from tosa_bench.measure.timing import measure_paired

    order: list[str] = []
    pair = measure_paired(*_pair(order), SideTimer(order, {"a": [2.0] * 100, "b": [2.0] * 100}), warmup=10, steps_per_round=1,
                          max_rounds=10, min_rounds=2, time_budget_s=8.0, target_halfwidth=-1)
    assert pair.a.warmup_steps == pair.b.warmup_steps == 1
    assert "".join(order) == "ab" + "ab" + "ba" and len(pair.round_ratios) == 2
    unbudgeted = measure_paired(lambda: None, lambda: None, FakeTimer([2.0] * 100), warmup=10, steps_per_round=2, min_rounds=1, max_rounds=1)
    assert unbudgeted.a.warmup_steps == 10


@pytest.mark.parametrize("n,k,coverage", [(5, 1, 1 - 2 / 32), (6, 1, 1 - 2 / 64), (8, 1, 1 - 2 / 256), (10, 2, 1 - 2 * 11 / 1024),
                                          (20, 6, 1 - 2 * sum(math.comb(20, j) for j in range(6)) / 2**20)])
def test_median_interval_order_statistics(n, k, coverage) -> None:
    """The interval is (x_(k), x_(n+1-k)) for the largest k with binomial coverage >= 95%
    (hand-computed k per n; for n = 20 the 6th and 15th values, 95.86%)."""
    from tosa_bench.measure.timing import median_interval

    values = [float(v) for v in range(n, 0, -1)]  # unsorted on purpose
    lo, hi, cov = median_interval(values)
    assert (lo, hi) == (float(k), float(n + 1 - k)) and cov == pytest.approx(coverage)
    if n <= 5:
        assert cov < 0.95  # too few rounds: callers flag it


def test_point_speedup_fields_from_known_times(monkeypatch) -> None:
    """measure_point's speed-up fields against a fake clock: dense steps take 2 ms, the
    variant's 1 ms, so speedup_paired must be exactly 2, its interval (2, 2), throughput
    batch / 1 ms, the ideal the ratio of the two closed-form GMACs computed here on their
    own, and the efficiency their quotient."""
    import tosa_bench.measure.timing as timing
    from tosa_bench.measure.analytic import analytic_gmacs
    from tosa_bench.measure.point import measure_point
    from tosa_bench.measure.spec import Point, Settings

    class ByModel:
        name = "fake"

        def time(self, step_fn):
            step_fn()
            return self.next

    timer = ByModel()
    monkeypatch.setattr(timing, "default_timer", lambda device: timer)
    point = Point("test_tiny", "tosa", {"keep": 0.5}, batch_size=4, device="cpu")

    from tosa_bench.build import build_model as real_build

    def tagged(name, variant="dense", **kw):
        net = real_build(name, variant, **kw)
        step_time = 0.002 if variant == "dense" else 0.001
        hook = lambda *_: setattr(timer, "next", step_time)  # noqa: E731
        net.register_forward_pre_hook(hook)
        return net

    import tosa_bench.measure.point as point_mod
    import tosa_bench.measure.spec as spec_mod

    monkeypatch.setattr(point_mod, "build_model", tagged)
    monkeypatch.setattr(spec_mod, "build_model", tagged)
    rec = measure_point(point, Settings(latency=False, memory=False, warmup=1, pair_min_rounds=6, pair_max_rounds=8))
    assert rec["speedup_paired"] == 2.0
    assert (rec["speedup_paired_ci_low"], rec["speedup_paired_ci_high"]) == (2.0, 2.0) and rec["speedup_paired_noisy"] is False
    assert rec["pair_rounds"] == 6  # zero-width interval: stops at the minimum
    assert rec["throughput_img_s"] == pytest.approx(4 / 0.001) and rec["dense_throughput_img_s_paired"] == pytest.approx(4 / 0.002)
    ideal = analytic_gmacs("test_tiny", "dense", {}) / analytic_gmacs("test_tiny", "tosa", {"keep": 0.5})
    assert rec["speedup_ideal"] == pytest.approx(ideal, rel=1e-12)
    assert rec["speedup_efficiency"] == pytest.approx(2.0 / ideal, rel=1e-12)
