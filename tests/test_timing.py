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


def test_point_fields_map_every_paired_statistic_to_its_own_value(monkeypatch) -> None:
    """measure_point against a hand-built PairedStats whose every statistic differs (step
    times spread, round ratios spread), so a field taken from the wrong statistic (min for
    max, dense for variant, p10 for p90) or a setting not handed on is seen. Also checks
    that the dense twin runs the variant's own backbone weights: at keep 1.0 the random
    control computes what dense computes, so their outputs must be equal."""
    import tosa_bench.measure.timing as timing
    from tosa_bench.measure.point import measure_point
    from tosa_bench.measure.spec import Point, Settings
    from tosa_bench.measure.timing import PairedStats

    dense_times = (0.004, 0.002, 0.003, 0.0035)  # median 0.00325
    variant_times = (0.001, 0.0015, 0.002, 0.0012, 0.0011)  # median 0.0012, min 0.001, max 0.002
    ratios = (1.5, 2.5, 2.0, 1.8, 2.2, 2.1, 1.9)  # median 2.0; 7 rounds: the 95% interval is (min, max)
    seen: dict[str, Any] = {}

    def fake_paired(step_a, step_b, timer, **kw):
        seen.update(kw)
        outputs = []
        hooks = [m.register_forward_hook(lambda mod, args, out: outputs.append(out)) for m in seen_models]
        step_a(), step_b()
        for h in hooks:
            h.remove()
        seen["outputs"] = outputs
        a = TimingStats(dense_times, 2, 0.01, 10, False, "fake", 1)
        b = TimingStats(variant_times, 4, 0.02, 10, False, "fake", 1)
        return PairedStats(a, b, ratios)

    import tosa_bench.measure.point as point_mod
    import tosa_bench.measure.spec as spec_mod
    from tosa_bench.build import build_model as real_build

    seen_models: list[nn.Module] = []

    def recording(name, variant="dense", **kw):
        net = real_build(name, variant, **kw)
        seen_models.append(net)
        return net

    monkeypatch.setattr(timing, "measure_paired", fake_paired)
    monkeypatch.setattr(point_mod, "build_model", recording)
    monkeypatch.setattr(spec_mod, "build_model", recording)
    settings = Settings(latency=False, memory=False, warmup=3, pair_steps=2, pair_min_rounds=5, pair_max_rounds=9, pair_budget_s=7.5,
                        pair_target=0.03, noise_threshold=0.3)
    rec = measure_point(Point("test_tiny", "random", {"keep": 1.0}, batch_size=4, device="cpu"), settings)

    assert {k: seen[k] for k in ("warmup", "steps_per_round", "min_rounds", "max_rounds", "time_budget_s", "target_halfwidth")} == {
        "warmup": 3, "steps_per_round": 2, "min_rounds": 5, "max_rounds": 9, "time_budget_s": 7.5, "target_halfwidth": 0.03}
    dense_out, variant_out = seen["outputs"]
    assert torch.equal(dense_out, variant_out)  # the twin has the variant's backbone weights
    assert rec["throughput_img_s"] == pytest.approx(4 / 0.0012, rel=1e-12)
    assert (rec["throughput_img_s_low"], rec["throughput_img_s_high"]) == (pytest.approx(4 / 0.002), pytest.approx(4 / 0.001))
    assert rec["step_ms_median"] == pytest.approx(1.2)
    assert rec["step_ms_p10"] == pytest.approx(np.percentile(variant_times, 10) * 1e3)
    assert rec["step_ms_p90"] == pytest.approx(np.percentile(variant_times, 90) * 1e3)
    assert (rec["timed_steps"], rec["warmup_steps"], rec["timer"]) == (5, 4, "fake")  # the variant's, not the settings'
    assert rec["dense_throughput_img_s_paired"] == pytest.approx(4 / 0.00325, rel=1e-12)
    assert rec["speedup_paired"] == 2.0
    assert (rec["speedup_paired_ci_low"], rec["speedup_paired_ci_high"]) == (1.5, 2.5)
    assert rec["speedup_paired_ci_coverage"] == pytest.approx(1 - 2 / 2**7)
    assert (rec["speedup_paired_min"], rec["speedup_paired_max"]) == (1.5, 2.5)
    assert rec["speedup_paired_rounds"] == list(ratios) and (rec["pair_rounds"], rec["pair_steps"]) == (7, 2)
    assert rec["speedup_paired_noisy"] is False  # half-width 0.25 of 2.0 = 12.5%, under the 30% threshold
    noisy = measure_point(Point("test_tiny", "random", {"keep": 1.0}, batch_size=4, device="cpu"),
                          Settings(latency=False, memory=False, noise_threshold=0.12))
    assert noisy["speedup_paired_noisy"] is True  # 12.5% > 12%


# --- written for the mutation check of timing.py (docs/mutation.md, third sitting) ---


def test_paired_defaults_warm_up_twice_and_run_6_to_20_single_step_rounds() -> None:
    from tosa_bench.measure.timing import measure_paired

    order: list[str] = []
    steady = measure_paired(*_pair(order), SideTimer(order, {"a": [1.0] * 40, "b": [0.5] * 40}))
    assert "".join(order[:4]) == "abab" and steady.a.warmup_steps == steady.b.warmup_steps == 2
    assert len(steady.round_ratios) == 6 and steady.a.repeats == steady.b.repeats == 6  # narrow at once: the minimum
    assert steady.a.requested_repeats == 20  # max_rounds x steps_per_round
    order2: list[str] = []
    jitter = [1.0, 1.3, 0.8, 1.2, 0.9, 1.4, 0.7, 1.1] * 6
    wide = measure_paired(*_pair(order2), SideTimer(order2, {"a": jitter, "b": [1.0] * 48}))
    assert len(wide.round_ratios) == 20  # never narrow: the maximum


@pytest.mark.parametrize("kwargs", [{"steps_per_round": 0}, {"max_rounds": 0}, {"min_rounds": 0}])
def test_paired_refuses_each_count_below_one(kwargs) -> None:
    from tosa_bench.errors import OptionError
    from tosa_bench.measure.timing import measure_paired

    with pytest.raises(OptionError, match=r"need steps_per_round, max_rounds and min_rounds >= 1, got"):
        measure_paired(lambda: None, lambda: None, FakeTimer([1.0] * 10), **kwargs)


@pytest.mark.parametrize("budget", [0, 0.0, -1.0])
def test_paired_and_measure_refuse_a_budget_that_is_not_positive(budget) -> None:
    from tosa_bench.errors import OptionError
    from tosa_bench.measure.timing import measure_paired

    with pytest.raises(OptionError, match=rf"time budget: expected a number of seconds > 0, got {budget}"):
        measure_paired(lambda: None, lambda: None, FakeTimer([1.0] * 10), time_budget_s=budget)
    with pytest.raises(OptionError, match=rf"time budget: expected a number of seconds > 0, got {budget}"):
        measure(lambda: None, 1, 3, FakeTimer([1.0] * 10), time_budget_s=budget)


def test_paired_records_each_sides_own_warmup_time() -> None:
    from tosa_bench.measure.timing import measure_paired

    order: list[str] = []
    pair = measure_paired(*_pair(order), SideTimer(order, {"a": [3.0, 5.0] + [1.0] * 6, "b": [2.0, 0.25] + [0.5] * 6}), warmup=2,
                          min_rounds=6, max_rounds=6)
    assert (pair.a.warmup_time_s, pair.b.warmup_time_s) == (8.0, 2.25)


def test_paired_budget_counts_from_zero_and_stops_warmup_at_exactly_a_quarter() -> None:
    """Steps of 1 s: with a 3 s budget and no warm-up, round 1 spends 2 s (< 3: go on) and
    round 2 reaches 4 s (stop): 2 rounds. With an 8 s budget, one warm-up step of each
    spends exactly a quarter (2 s): warm-up stops there. With 0.1 s steps and a 0.5 s
    budget a quarter is 0.125 s: again one warm-up step of each."""
    from tosa_bench.measure.timing import measure_paired

    two = measure_paired(lambda: None, lambda: None, FakeTimer([1.0] * 40), warmup=0, min_rounds=1, max_rounds=10, time_budget_s=3.0,
                         target_halfwidth=-1)
    assert len(two.round_ratios) == 2 and two.a.stopped_by_budget
    quarter = measure_paired(lambda: None, lambda: None, FakeTimer([1.0] * 40), warmup=5, min_rounds=2, max_rounds=2, time_budget_s=8.0)
    assert quarter.a.warmup_steps == quarter.b.warmup_steps == 1
    small = measure_paired(lambda: None, lambda: None, FakeTimer([0.1] * 40), warmup=5, min_rounds=2, max_rounds=2, time_budget_s=0.5)
    assert small.a.warmup_steps == small.b.warmup_steps == 1


def test_timing_stats_summary_and_throughput_by_hand() -> None:
    stats = TimingStats((0.004, 0.001, 0.002, 0.003, 0.010), 3, 0.5, 7, True, "fake", 2)
    assert stats.summary() == {
        "timer": "fake", "num_threads": 2, "warmup_steps": 3, "warmup_time_s": 0.5, "requested_repeats": 7, "repeats": 5,
        "stopped_by_budget": True, "step_time_s_median": 0.003, "step_time_s_mean": pytest.approx(0.004),
        "step_time_s_min": 0.001, "step_time_s_max": 0.010,
        "step_time_s_p10": pytest.approx(np.percentile([0.004, 0.001, 0.002, 0.003, 0.010], 10)),
        "step_time_s_p90": pytest.approx(np.percentile([0.004, 0.001, 0.002, 0.003, 0.010], 90)),
        "step_time_s_iqr": pytest.approx(0.004 - 0.002), "step_times_s": [0.004, 0.001, 0.002, 0.003, 0.010],
    }
    tp = stats.throughput(4)
    assert (tp.batch_size, tp.images_per_s, tp.images_per_s_low, tp.images_per_s_high) == (4, pytest.approx(4 / 0.003),
                                                                                            pytest.approx(400.0), pytest.approx(4000.0))
    from tosa_bench.errors import OptionError

    with pytest.raises(OptionError, match="batch_size must be >= 1, got 0"):
        stats.throughput(0)


def test_measure_takes_one_repeat_and_keeps_three_by_default_under_a_budget() -> None:
    one = measure(lambda: None, 0, 1, FakeTimer([1.0]))
    assert one.repeats == 1 and one.stopped_by_budget is False
    one_budgeted = measure(lambda: None, 0, 1, FakeTimer([5.0, 5.0]), time_budget_s=1.0)
    assert one_budgeted.repeats == 1  # the floor is min(3, repeats) = 1, not 2
    floor = measure(lambda: None, 0, 10, FakeTimer([5.0] * 10), time_budget_s=1.0)
    assert floor.repeats == 3 and floor.stopped_by_budget is True  # min_repeats defaults to 3
    from tosa_bench.errors import OptionError

    with pytest.raises(OptionError, match="need warmup >= 0 and repeats >= 1, got warmup=0, repeats=0"):
        measure(lambda: None, 0, 0, FakeTimer([]))


def test_throughput_and_latency_defaults_and_their_fixed_images(monkeypatch) -> None:
    """Defaults: fp32, 10 warm-up and 40 timed steps, no compile (torch.compile must not be
    called); the images are torch.randn from a generator seeded 0, so every variant sees
    the same batch; a budget is passed down (0.5 s of 1 s steps: the minimum 3 steps)."""
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled without compile=True"))
    seen: list[torch.Tensor] = []

    class Record(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x

    r = measure_throughput(Record(), 2, (8, 4), "cpu", timer=FakeTimer([0.01] * 50))
    assert (r["dtype"], r["warmup_steps"], r["repeats"], r["compile"]) == ("fp32", 10, 40, False)
    assert torch.equal(seen[0], torch.randn(2, 3, 8, 4, generator=torch.Generator().manual_seed(0)))
    lat = measure_latency(Record(), 8, "cpu", timer=FakeTimer([0.01] * 50))
    assert (lat["dtype"], lat["warmup_steps"], lat["repeats"], lat["compile"]) == ("fp32", 10, 40, False)
    budgeted = measure_throughput(Record(), 2, 8, "cpu", warmup=0, repeats=10, time_budget_s=0.5, timer=FakeTimer([1.0] * 10))
    assert budgeted["repeats"] == 3 and budgeted["stopped_by_budget"] is True
    budgeted_lat = measure_latency(Record(), 8, "cpu", warmup=0, repeats=10, time_budget_s=0.5, timer=FakeTimer([1.0] * 10))
    assert budgeted_lat["repeats"] == 3


def test_cuda_timer_uses_its_device_and_torch_cuda_by_default() -> None:
    class DeviceLog(FakeCuda):
        def __init__(self) -> None:
            super().__init__()
            self.devices: list[Any] = []

        def current_stream(self, device: Any = None) -> str:
            self.devices.append(("stream", device))
            return "stream0"

        def synchronize(self, device: Any = None) -> None:
            self.devices.append(("sync", device))

    cuda = DeviceLog()
    CudaEventTimer("cuda:1", cuda=cuda).time(lambda: None)
    assert cuda.devices == [("stream", "cuda:1"), ("sync", "cuda:1")]
    assert CudaEventTimer("cuda:0")._cuda is torch.cuda
    timer = default_timer("cuda:1")
    assert isinstance(timer, CudaEventTimer) and timer._device == torch.device("cuda:1")
    from tosa_bench.errors import OptionError

    with pytest.raises(OptionError, match=r"device: timing supports 'cpu' and 'cuda', got 'meta'"):
        default_timer("meta")


def test_paired_stops_on_its_own_level_and_at_exactly_the_target() -> None:
    """Rounds 1-6 give ratios 2, 2, 2, 2, 2.5, 1.5 (then 2): the 95% interval of 6 rounds is
    (1.5, 2.5), a half-width of exactly 0.25 of the median 2. A target of 0.25 stops at 6
    rounds, 0.2 runs to the maximum. At level 0.6 the interval of the same rounds is
    (2, 2): it stops at 6 even with a target of 0. A level equal to the 6-round coverage
    (1 - 2/64) is reached. Every PairedStats carries the level, the timer's name, the
    thread count and max_rounds x steps_per_round as requested steps."""
    from tosa_bench.measure.timing import measure_paired

    def run(**kw):
        order: list[str] = []
        a = [2.0, 2.0, 2.0, 2.0, 2.5, 1.5] + [2.0] * 20
        return measure_paired(*_pair(order), SideTimer(order, {"a": a, "b": [1.0] * 26}), warmup=0, min_rounds=6, max_rounds=8, **kw)

    at_target = run(target_halfwidth=0.25)
    assert len(at_target.round_ratios) == 6 and at_target.halfwidth == 0.25
    assert len(run(target_halfwidth=0.2).round_ratios) == 8
    loose = run(target_halfwidth=0.0, level=0.6)
    assert len(loose.round_ratios) == 6 and loose.level == 0.6 and loose.interval[:2] == (2.0, 2.0)
    exact = run(target_halfwidth=0.25, level=1 - 2 / 64)
    assert len(exact.round_ratios) == 6
    assert at_target.a.stopped_by_budget is False and at_target.b.stopped_by_budget is False
    assert at_target.a.timer == at_target.b.timer == "fake" and at_target.a.num_threads == torch.get_num_threads()
    # 20 equal rounds at level 0.98: the interval (x_5, x_16) covers 98.8%; the 95% pair
    # (x_6, x_15) only 95.9%, which a coverage check at the wrong level would take as short
    order3: list[str] = []
    high = measure_paired(*_pair(order3), SideTimer(order3, {"a": [1.0] * 30, "b": [0.5] * 30}), warmup=0, min_rounds=20, max_rounds=22,
                          level=0.98)
    assert len(high.round_ratios) == 20
    order: list[str] = []
    two_steps = measure_paired(*_pair(order), SideTimer(order, {"a": [1.0] * 20, "b": [0.5] * 20}), warmup=0, steps_per_round=2,
                               min_rounds=4, max_rounds=4)
    assert two_steps.a.requested_repeats == two_steps.b.requested_repeats == 8


def test_paired_budget_reached_exactly_stops() -> None:
    from tosa_bench.measure.timing import measure_paired

    pair = measure_paired(lambda: None, lambda: None, FakeTimer([1.0] * 40), warmup=0, min_rounds=1, max_rounds=10, time_budget_s=4.0,
                          target_halfwidth=-1)
    assert len(pair.round_ratios) == 2 and pair.a.stopped_by_budget is True


def test_measure_min_repeats_one_stops_after_one_step_and_batch_size_is_checked() -> None:
    stats = measure(lambda: None, 0, 5, FakeTimer([2.0] * 5), time_budget_s=1.0, min_repeats=1)
    assert stats.repeats == 1 and stats.stopped_by_budget is True
    from tosa_bench.errors import OptionError

    with pytest.raises(OptionError, match="batch_size must be >= 1, got 0"):
        measure_throughput(Tiny(), 0, 16, "cpu", timer=FakeTimer([]))


@pytest.mark.parametrize("variant,settings_kw,paired", [
    ("random", {"paired": False}, False),  # a variant timed alone when pairing is off
    ("dense", {}, False),  # dense is not paired with itself by default
    ("dense", {"pair_dense": True}, True),  # ... unless asked (the A/A check)
    ("random", {}, True),
])
def test_point_pairs_exactly_when_asked(monkeypatch, variant, settings_kw, paired) -> None:
    import tosa_bench.measure.timing as timing
    from tosa_bench.measure.point import measure_point
    from tosa_bench.measure.spec import Point, Settings
    from tosa_bench.measure.timing import PairedStats

    calls: list[str] = []

    def fake_paired(step_a, step_b, timer, **kw):
        calls.append("paired")
        s = TimingStats((0.002,) * 6, 1, 0.002, 6, False, "fake", 1)
        return PairedStats(s, s, (1.0,) * 6)

    monkeypatch.setattr(timing, "measure_paired", fake_paired)
    monkeypatch.setattr(timing, "default_timer", lambda device: FakeTimer([0.001] * 100))
    options = {} if variant == "dense" else {"keep": 0.5}
    rec = measure_point(Point("test_tiny", variant, options, batch_size=2, device="cpu"),
                        Settings(latency=False, memory=False, warmup=1, repeats=3, **settings_kw))
    assert (calls == ["paired"]) is paired
    assert (rec.get("speedup_paired") is not None) is paired


def test_point_dense_twin_gets_the_points_checkpoint_size_images_and_compile(monkeypatch, tmp_path) -> None:
    """The dense twin is built with the point's checkpoint and image size; with
    ``compile`` both sides are compiled (and without it neither); both sides run the same
    images, torch.randn from a generator seeded 0."""
    import tosa_bench.measure.point as point_mod
    import tosa_bench.measure.spec as spec_mod
    import tosa_bench.measure.timing as timing
    from tosa_bench.build import build_model as real_build
    from tosa_bench.measure.point import measure_point
    from tosa_bench.measure.spec import Point, Settings
    from tosa_bench.measure.timing import PairedStats

    builds: list[tuple[str, dict]] = []
    inputs: list[torch.Tensor] = []

    def recording(name, variant="dense", **kw):
        builds.append((variant, dict(kw)))
        net = real_build(name, variant, img_size=kw.get("img_size"), **{k: v for k, v in kw.items() if k not in ("checkpoint", "selector", "img_size")})
        net.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].clone()))
        return net

    def fake_paired(step_a, step_b, timer, **kw):
        step_a(), step_b()
        s = TimingStats((0.002,) * 6, 1, 0.002, 6, False, "fake", 1)
        return PairedStats(s, s, (1.0,) * 6)

    compiled: list[nn.Module] = []
    monkeypatch.setattr(torch, "compile", lambda m, *a, **k: compiled.append(m) or m)
    monkeypatch.setattr(timing, "measure_paired", fake_paired)
    monkeypatch.setattr(point_mod, "build_model", recording)
    monkeypatch.setattr(spec_mod, "build_model", recording)
    monkeypatch.setattr(point_mod, "_check_finite", lambda *a: None)
    ckpt = tmp_path / "weights.safetensors"
    point = Point("test_tiny", "random", {"keep": 0.5}, batch_size=2, device="cpu", img_size=48, checkpoint=str(ckpt))
    settings = Settings(latency=False, memory=False, warmup=1, repeats=3)
    import tosa_bench.measure.point as pm

    monkeypatch.setattr(pm, "count_point", lambda model: {})
    measure_point(point, settings)
    dense_builds = [kw for variant, kw in builds if variant == "dense"]
    assert dense_builds and all(kw["checkpoint"] == str(ckpt) and kw["img_size"] == 48 for kw in dense_builds)
    assert compiled == []
    expected = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    assert len(inputs) == 2 and all(torch.equal(x, expected) for x in inputs)
    builds.clear()
    measure_point(Point("test_tiny", "random", {"keep": 0.5}, batch_size=2, device="cpu", compile=True), settings)
    assert len(compiled) == 2 and {type(m).__name__ for m in compiled} == {"VisionTransformer"}


def test_point_unpaired_fields_come_from_measure_throughput(monkeypatch) -> None:
    """paired=False: the throughput fields are measure_throughput's, each from its own key,
    and the point's budget and compile flag are handed to it."""
    import tosa_bench.measure.timing as timing
    from tosa_bench.measure.point import measure_point
    from tosa_bench.measure.spec import Point, Settings

    seen: dict[str, Any] = {}

    def fake_throughput(model, batch_size, img_size, device, dtype, warmup, repeats, time_budget_s, compile, timer=None):
        seen.update(warmup=warmup, repeats=repeats, time_budget_s=time_budget_s, compile=compile, batch_size=batch_size)
        return {"images_per_s": 100.0, "images_per_s_low": 80.0, "images_per_s_high": 125.0, "step_time_s_median": 0.02,
                "step_time_s_p10": 0.017, "step_time_s_p90": 0.024, "repeats": 7, "warmup_steps": 4, "timer": "fake-tp"}

    monkeypatch.setattr(timing, "measure_throughput", fake_throughput)
    monkeypatch.setattr(torch, "compile", lambda m, *a, **k: m)
    rec = measure_point(Point("test_tiny", "random", {"keep": 0.5}, batch_size=2, device="cpu", compile=True),
                        Settings(latency=False, memory=False, paired=False, warmup=4, repeats=7, time_budget_s=3.5))
    assert seen == {"warmup": 4, "repeats": 7, "time_budget_s": 3.5, "compile": "default", "batch_size": 2}  # true reads as the default mode
    assert {k: rec[k] for k in ("throughput_img_s", "throughput_img_s_low", "throughput_img_s_high", "step_ms_median", "step_ms_p10",
                                "step_ms_p90", "timed_steps", "warmup_steps", "timer")} == {
        "throughput_img_s": 100.0, "throughput_img_s_low": 80.0, "throughput_img_s_high": 125.0, "step_ms_median": 20.0,
        "step_ms_p10": pytest.approx(17.0), "step_ms_p90": pytest.approx(24.0), "timed_steps": 7, "warmup_steps": 4, "timer": "fake-tp"}


def test_median_interval_edges_and_noisy_at_exactly_its_limits() -> None:
    """One value: (x, x) with coverage 1 - 2 P(Bin(1, 1/2) <= 0) = 0; no values: a clear
    error. A pair whose half-width is exactly the threshold, or whose coverage is exactly
    its level, is not noisy (the limits are inclusive)."""
    from tosa_bench.measure.timing import PairedStats, median_interval

    assert median_interval([3.0]) == (3.0, 3.0, 0.0)
    with pytest.raises(ValueError, match="^median_interval: no values$"):
        median_interval([])
    s = TimingStats((1.0,), 0, 0.0, 1, False, "fake", 1)
    pair = PairedStats(s, s, (2.0, 2.0, 2.0, 2.0, 2.5, 1.5))  # interval (1.5, 2.5): half-width 0.25
    assert pair.halfwidth == 0.25 and not pair.noisy(0.25) and pair.noisy(0.2499)
    exact = PairedStats(s, s, (2.0,) * 6, level=1 - 2 / 64)  # 6 rounds cover exactly 1 - 2/64
    assert exact.interval[2] == exact.level and not exact.noisy(0.05)


def test_median_interval_at_low_levels_reaches_the_median_and_one_step_stats() -> None:
    """At level 0 the largest k qualifies: for 5 values k = 3, the median itself, with
    coverage exactly 0 (1 - 2 P(Bin(5, 1/2) <= 2)). One timed step: every percentile is
    that step. No timed step: a clear error."""
    from tosa_bench.measure.timing import median_interval

    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0], level=0.0) == (3.0, 3.0, 0.0)
    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0], level=0.3) == (2.0, 4.0, pytest.approx(1 - 2 * 6 / 32))
    one = TimingStats((0.5,), 0, 0.0, 1, False, "fake", 1)
    assert (one.p10_s, one.p90_s, one.iqr_s, one.median_s) == (0.5, 0.5, 0.0, 0.5)
    with pytest.raises(ValueError, match="^TimingStats needs at least one timed step$"):
        TimingStats((), 0, 0.0, 1, False, "fake", 1)


def test_remeasured_speedup_pools_the_rounds_of_every_measurement(monkeypatch) -> None:
    """remeasure_speedup adds the new rounds to the record's own and recomputes every
    speed-up field from all of them: median, 95% interval and its coverage, the noisy
    flag at the settings' threshold, range, efficiency, rounds, pair_measurements; the
    other fields stay the record's. A record without rounds is refused."""
    import tosa_bench.measure.timing as timing
    from tosa_bench.measure.point import remeasure_speedup
    from tosa_bench.measure.spec import Point, Settings
    from tosa_bench.measure.timing import PairedStats, median_interval

    new_rounds = (2.0, 2.1, 1.9, 2.0, 2.05, 1.95)
    seen: dict[str, Any] = {}

    def fake_paired(step_a, step_b, timer, **kw):
        seen.update(kw)
        step_a(), step_b()
        s = TimingStats((0.002,) * 6, 1, 0.002, 6, False, "fake", 1)
        return PairedStats(s, s, new_rounds)

    monkeypatch.setattr(timing, "measure_paired", fake_paired)
    old_rounds = [0.5, 4.0, 2.2, 0.9, 1.8, 3.5]  # a noisy first measurement
    previous = {"speedup_paired": 2.0, "speedup_paired_rounds": old_rounds, "speedup_paired_noisy": True, "speedup_ideal": 4.0,
                "throughput_img_s": 123.0, "status": "ok", "pair_rounds": 6}
    point = Point("test_tiny", "random", {"keep": 0.5}, batch_size=2, device="cpu")
    settings = Settings(latency=False, memory=False, pair_min_rounds=6, noise_threshold=0.2)
    rec = remeasure_speedup(point, settings, previous)
    pooled = old_rounds + list(new_rounds)
    low, high, coverage = median_interval(pooled)
    assert rec["speedup_paired_rounds"] == pooled and rec["pair_rounds"] == 12 and rec["pair_measurements"] == 2
    assert rec["speedup_paired"] == statistics.median(pooled) == 2.0
    assert (rec["speedup_paired_ci_low"], rec["speedup_paired_ci_high"], rec["speedup_paired_ci_coverage"]) == (low, high, coverage)
    assert (low, high) == (1.8, 2.2)  # 12 rounds: the 3rd and 10th sorted; the first measurement alone: (0.5, 4.0)
    assert rec["speedup_paired_noisy"] is False and rec["speedup_efficiency"] == 0.5  # +-10% < 20%; 2.0 of the ideal 4.0
    assert (rec["speedup_paired_min"], rec["speedup_paired_max"]) == (0.5, 4.0)
    assert rec["throughput_img_s"] == 123.0 and previous["speedup_paired_rounds"] == old_rounds  # the rest is kept, the input untouched
    assert seen["min_rounds"] == 6
    again = remeasure_speedup(point, Settings(latency=False, memory=False, noise_threshold=0.01), rec)
    assert again["pair_measurements"] == 3 and again["pair_rounds"] == 18 and again["speedup_paired_noisy"] is True  # wider than +-1%
    with pytest.raises(ValueError, match="no paired rounds"):
        remeasure_speedup(point, settings, {"speedup_paired": None})
