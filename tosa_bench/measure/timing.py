"""Throughput and latency, measured the way timm's ``benchmark.py`` and DeiT do.

Protocol: ``torch.inference_mode()``; ``warmup`` untimed steps (excluded from every
statistic); then ``repeats`` timed steps, each one batch forward followed by a device
synchronise. On CUDA a step is timed with CUDA events (synchronised before the start
event and after the end event); on CPU with ``time.perf_counter``. The headline figure
is the MEDIAN step time; the spread is reported with it (min/max, p10/p90, IQR).

All times are in SECONDS unless a name says ``_ms``; throughput is in images per second.

The timer is injectable (:class:`StepTimer`), so the statistics and the budget logic are
tested on a fake clock without a GPU.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

from tosa_bench.errors import OptionError
from tosa_bench.precision import autocast, resolve_autocast
from torch import nn

__all__ = [
    "StepTimer",
    "PerfCounterTimer",
    "CudaEventTimer",
    "default_timer",
    "TimingStats",
    "Throughput",
    "measure",
    "measure_throughput",
    "measure_latency",
    "measure_paired",
    "median_interval",
    "PairedStats",
]

class StepTimer(Protocol):
    """Runs one step and returns how long it took, in seconds, device work included."""

    name: str

    def time(self, step_fn: Callable[[], Any]) -> float: ...


class PerfCounterTimer:
    """CPU timer: ``time.perf_counter`` around the step (CPU ops are synchronous).

    ``clock`` is injectable (a callable returning seconds) for tests.
    """

    name = "perf_counter"

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock

    def time(self, step_fn: Callable[[], Any]) -> float:
        t0 = self._clock()
        step_fn()
        return self._clock() - t0


class CudaEventTimer:
    """CUDA timer: synchronise, record a start event, run, record an end event, wait for
    it, and return ``start.elapsed_time(end)`` (ms) / 1000 as seconds.

    Events are recorded on the current stream of ``device``. ``cuda`` defaults to
    ``torch.cuda``; tests pass a fake with ``Event``, ``current_stream`` and ``synchronize``.
    """

    name = "cuda_events"

    def __init__(self, device: torch.device | str | int | None = None, cuda: Any = None) -> None:
        self._cuda = cuda if cuda is not None else torch.cuda
        self._device = device

    def time(self, step_fn: Callable[[], Any]) -> float:
        cuda = self._cuda
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        stream = cuda.current_stream(self._device)
        cuda.synchronize(self._device)
        start.record(stream)
        step_fn()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def default_timer(device: torch.device | str) -> StepTimer:
    """:class:`CudaEventTimer` on a CUDA device, :class:`PerfCounterTimer` on the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return CudaEventTimer(dev)
    if dev.type == "cpu":
        return PerfCounterTimer()
    raise OptionError(f"device: timing supports 'cpu' and 'cuda', got {str(dev)!r}")


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) by linear interpolation between order statistics
    (numpy's default "linear" method)."""
    n = len(sorted_values)
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Throughput:
    """Images per second for a batch size.

    images_per_s: batch_size / median step time (the headline figure).
    images_per_s_low: batch_size / slowest (max) step time.
    images_per_s_high: batch_size / fastest (min) step time.
    """

    batch_size: int
    images_per_s: float
    images_per_s_low: float
    images_per_s_high: float


@dataclass(frozen=True)
class TimingStats:
    """Timed steps of one measurement (seconds) and their statistics.

    step_times_s: the timed steps in order (warm-up excluded).
    warmup_steps / warmup_time_s: warm-up steps actually run and their total time.
    requested_repeats: timed steps asked for; fewer were run if ``stopped_by_budget``.
    timer: name of the timer (``cuda_events``, ``perf_counter``, or a fake's).
    num_threads: ``torch.get_num_threads()`` during the measurement (CPU intra-op threads).
    Percentiles use linear interpolation; ``iqr_s`` = p75 - p25.
    """

    step_times_s: tuple[float, ...]
    warmup_steps: int
    warmup_time_s: float
    requested_repeats: int
    stopped_by_budget: bool
    timer: str
    num_threads: int
    _sorted: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.step_times_s:
            raise ValueError("TimingStats needs at least one timed step")
        object.__setattr__(self, "_sorted", tuple(sorted(self.step_times_s)))

    @property
    def repeats(self) -> int:
        """Timed steps actually run."""
        return len(self.step_times_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.step_times_s)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.step_times_s)

    @property
    def min_s(self) -> float:
        return self._sorted[0]

    @property
    def max_s(self) -> float:
        return self._sorted[-1]

    @property
    def p10_s(self) -> float:
        return _percentile(self._sorted, 10)

    @property
    def p90_s(self) -> float:
        return _percentile(self._sorted, 90)

    @property
    def iqr_s(self) -> float:
        return _percentile(self._sorted, 75) - _percentile(self._sorted, 25)

    @property
    def latency_ms_p50(self) -> float:
        """Median step time in milliseconds."""
        return self.median_s * 1e3

    @property
    def latency_ms_p90(self) -> float:
        """90th-percentile step time in milliseconds."""
        return self.p90_s * 1e3

    def throughput(self, batch_size: int) -> Throughput:
        """Images/s from the median step time, with the values at the max and min step."""
        if batch_size < 1:
            raise OptionError(f"batch_size must be >= 1, got {batch_size}")
        return Throughput(
            batch_size=batch_size,
            images_per_s=batch_size / self.median_s,
            images_per_s_low=batch_size / self.max_s,
            images_per_s_high=batch_size / self.min_s,
        )

    def summary(self) -> dict[str, Any]:
        """JSON-friendly statistics (seconds unless the key says ms)."""
        return {
            "timer": self.timer,
            "num_threads": self.num_threads,
            "warmup_steps": self.warmup_steps,
            "warmup_time_s": self.warmup_time_s,
            "requested_repeats": self.requested_repeats,
            "repeats": self.repeats,
            "stopped_by_budget": self.stopped_by_budget,
            "step_time_s_median": self.median_s,
            "step_time_s_mean": self.mean_s,
            "step_time_s_min": self.min_s,
            "step_time_s_max": self.max_s,
            "step_time_s_p10": self.p10_s,
            "step_time_s_p90": self.p90_s,
            "step_time_s_iqr": self.iqr_s,
            "step_times_s": list(self.step_times_s),
        }


def measure(
    step_fn: Callable[[], Any],
    warmup: int,
    repeats: int,
    timer: StepTimer,
    time_budget_s: float | None = None,
    min_repeats: int = 3,
    warmup_budget_fraction: float = 0.25,
) -> TimingStats:
    """Run ``warmup`` untimed then up to ``repeats`` timed calls of ``step_fn``.

    Budget (``time_budget_s``, seconds of measured step time, warm-up included):
    warm-up stops early once it has used ``warmup_budget_fraction`` of the budget, after
    at least one step (the first step carries lazy initialisation / compilation); timed
    steps stop once warm-up + timed time reaches the budget, but never before
    ``min(min_repeats, repeats)`` timed steps. Without a budget, exactly ``warmup`` and
    ``repeats`` steps run.
    """
    if warmup < 0 or repeats < 1:
        raise OptionError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise OptionError(f"time budget: expected a number of seconds > 0, got {time_budget_s}")
    floor = max(1, min(min_repeats, repeats))

    warm_time, warm_steps = 0.0, 0
    while warm_steps < warmup:
        if time_budget_s is not None and warm_steps >= 1 and warm_time >= warmup_budget_fraction * time_budget_s:
            break
        warm_time += timer.time(step_fn)
        warm_steps += 1

    times: list[float] = []
    spent = warm_time
    stopped = False
    while len(times) < repeats:
        if time_budget_s is not None and len(times) >= floor and spent >= time_budget_s:
            stopped = True
            break
        t = timer.time(step_fn)
        times.append(t)
        spent += t
    return TimingStats(
        step_times_s=tuple(times),
        warmup_steps=warm_steps,
        warmup_time_s=warm_time,
        requested_repeats=repeats,
        stopped_by_budget=stopped,
        timer=timer.name,
        num_threads=torch.get_num_threads(),
    )


def _image_hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = img_size
    return int(h), int(w)


def _run(
    model: nn.Module,
    batch_size: int,
    img_size: int | Sequence[int],
    device: torch.device | str,
    dtype: str,
    warmup: int,
    repeats: int,
    time_budget_s: float | None,
    compile: str | None,
    timer: StepTimer | None,
    phase: str,
) -> tuple[TimingStats, dict[str, Any]]:
    from tosa_bench.measure.compiled import compile_and_warm, fresh_compile, maybe_no_recompiles

    dev = torch.device(device)
    resolve_autocast(dtype, dev)  # validates dtype before any work
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    h, w = _image_hw(img_size)
    model = model.eval().to(dev)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, h, w, generator=gen).to(dev)

    def call(run: Callable[..., Any]) -> None:
        with torch.inference_mode(), autocast(dtype, dev):
            run(images)

    runner: Callable[..., Any] = model
    info = None
    if compile:  # compiled and warmed here, outside the timed steps
        fresh_compile()
        runner, info = compile_and_warm(model, compile, call, sync=device_sync(dev))
    with maybe_no_recompiles(bool(compile), phase):
        stats = measure(lambda: call(runner), warmup, repeats, timer or default_timer(dev), time_budget_s)
    meta = {"batch_size": batch_size, "img_size": [h, w], "device": str(dev), "dtype": dtype, "compile": compile or False,
            "compile_info": info}
    return stats, meta


def device_sync(dev: torch.device) -> Callable[[], None]:
    """Wait for ``dev``'s queued work (CUDA); nothing on a CPU, whose ops are synchronous."""
    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)


def measure_throughput(
    model: nn.Module,
    batch_size: int,
    img_size: int | Sequence[int],
    device: torch.device | str,
    dtype: str = "fp32",
    warmup: int = 10,
    repeats: int = 40,
    time_budget_s: float | None = None,
    compile: str | None = None,
    timer: StepTimer | None = None,
) -> dict[str, Any]:
    """Images/s of ``model`` on random (batch_size, 3, H, W) inputs.

    The model is put in eval mode and moved to ``device`` (in place). ``dtype``: "fp32",
    "fp16" or "bf16"; the latter two run under ``torch.autocast`` (fp16 is refused on the
    CPU). ``compile``: a ``torch.compile`` mode (None: eager); the model is compiled and warmed
    before the timed steps (``compile_info`` in the result says how long that took) and a
    recompile during them raises :class:`~tosa_bench.measure.compiled.RecompiledWhileTimed`.
    Returns the meta data, ``images_per_s`` (from the median step) with
    ``images_per_s_low``/``_high`` (at the max/min step), and :meth:`TimingStats.summary`.
    """
    stats, meta = _run(model, batch_size, img_size, device, dtype, warmup, repeats, time_budget_s, compile, timer, "throughput")
    tp = stats.throughput(batch_size)
    return {
        **meta,
        "images_per_s": tp.images_per_s,
        "images_per_s_low": tp.images_per_s_low,
        "images_per_s_high": tp.images_per_s_high,
        **stats.summary(),
    }


def measure_latency(
    model: nn.Module,
    img_size: int | Sequence[int],
    device: torch.device | str,
    dtype: str = "fp32",
    warmup: int = 10,
    repeats: int = 40,
    time_budget_s: float | None = None,
    compile: str | None = None,
    timer: StepTimer | None = None,
) -> dict[str, Any]:
    """Batch-1 latency of ``model``: ``latency_ms_p50`` (median) and ``latency_ms_p90``, in
    milliseconds, plus :meth:`TimingStats.summary`. Same protocol and arguments as
    :func:`measure_throughput`."""
    stats, meta = _run(model, 1, img_size, device, dtype, warmup, repeats, time_budget_s, compile, timer, "latency")
    return {**meta, "latency_ms_p50": stats.latency_ms_p50, "latency_ms_p90": stats.latency_ms_p90, **stats.summary()}


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free confidence interval of the median of ``values``: the order
    statistics (x_(k), x_(n+1-k)) with the largest k whose coverage
    1 - 2 P(Binomial(n, 1/2) <= k - 1) is at least ``level``. Returns (low, high,
    coverage). With 5 values or fewer no pair reaches 95%: the interval is then (min, max)
    with the coverage it really has (n = 5: 93.75%), which callers flag as noisy.

    Why not a bootstrap: with the 6-20 rounds a sweep can afford, the bootstrap of a
    median is coarse and random; the order-statistic interval is exact for any
    continuous distribution and the same every time for the same rounds.
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_interval: no values")
    cdf = [0.0] * (n + 1)  # cdf[j] = P(Bin(n, 1/2) <= j)
    acc = 0.0
    for j in range(n + 1):
        acc += math.comb(n, j) / 2**n
        cdf[j] = acc
    best = 1
    for k in range(1, (n + 1) // 2 + 1):
        if 1 - 2 * cdf[k - 1] >= level:
            best = k
    return xs[best - 1], xs[n - best], 1 - 2 * cdf[best - 1]


@dataclass(frozen=True)
class PairedStats:
    """Two step functions timed in alternating rounds, so drift and other load on a
    shared machine hit both alike.

    a, b: all timed steps of each (warm-up excluded). round_ratios: per round, median A
    step / median B step (> 1: B is faster). ``speedup`` = the median of the round
    ratios: each compares steps taken moments apart, so slow drift cancels (a ratio of
    the overall medians would mix steps from different minutes). ``interval`` is the
    distribution-free 95% interval of that median (:func:`median_interval`) with its
    coverage; ``halfwidth`` its half-width relative to the speed-up.
    """

    a: TimingStats
    b: TimingStats
    round_ratios: tuple[float, ...]
    level: float = 0.95

    @property
    def speedup(self) -> float:
        return statistics.median(self.round_ratios)

    @property
    def interval(self) -> tuple[float, float, float]:
        return median_interval(self.round_ratios, self.level)

    @property
    def halfwidth(self) -> float:
        lo, hi, _ = self.interval
        return (hi - lo) / (2 * self.speedup)

    def noisy(self, threshold: float) -> bool:
        """True when the interval is wider than +-``threshold`` of the speed-up, or does
        not reach its nominal coverage (too few rounds)."""
        return self.halfwidth > threshold or self.interval[2] < self.level


def measure_paired(
    step_a: Callable[[], Any],
    step_b: Callable[[], Any],
    timer: StepTimer,
    warmup: int = 2,
    steps_per_round: int = 1,
    max_rounds: int = 20,
    min_rounds: int = 6,
    time_budget_s: float | None = None,
    target_halfwidth: float = 0.02,
    level: float = 0.95,
) -> PairedStats:
    """Time A against B in alternating rounds; the protocol is built so that neither side
    can be favoured by its position:

    - warm-up: ``warmup`` untimed steps of each, interleaved A, B, A, B, ... (both are
      warm before anything is timed; with a budget, warm-up stops after at least one step
      each once it has used a quarter of the budget);
    - round r runs ``steps_per_round`` timed steps of each side, A first in even rounds
      and B first in odd ones (ABBA ...), so a side never always follows the other;
      its ratio is median A step / median B step;
    - stopping: after ``min_rounds`` rounds, as soon as the 95% interval of the median
      ratio is within +-``target_halfwidth`` of it, or the budget (seconds of measured
      step time, warm-up included) is spent; at most ``max_rounds``.
    """
    if steps_per_round < 1 or max_rounds < 1 or min_rounds < 1:
        raise OptionError(f"need steps_per_round, max_rounds and min_rounds >= 1, got {steps_per_round}, {max_rounds}, {min_rounds}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise OptionError(f"time budget: expected a number of seconds > 0, got {time_budget_s}")
    steps = {"a": step_a, "b": step_b}
    times: dict[str, list[float]] = {"a": [], "b": []}
    warm = {"a": [0, 0.0], "b": [0, 0.0]}
    spent = 0.0
    for i in range(warmup):
        if time_budget_s is not None and i >= 1 and spent >= 0.25 * time_budget_s:
            break
        for key in ("a", "b"):
            t = timer.time(steps[key])
            warm[key][0] += 1
            warm[key][1] += t
            spent += t
    ratios: list[float] = []
    stopped = False
    for r in range(max_rounds):
        if r >= min(min_rounds, max_rounds):
            if median_interval(ratios, level)[2] >= level:
                lo, hi, _ = median_interval(ratios, level)
                if (hi - lo) / (2 * statistics.median(ratios)) <= target_halfwidth:
                    break
            if time_budget_s is not None and spent >= time_budget_s:
                stopped = True
                break
        medians = {}
        for key in (("a", "b") if r % 2 == 0 else ("b", "a")):
            own = [timer.time(steps[key]) for _ in range(steps_per_round)]
            times[key].extend(own)
            medians[key] = statistics.median(own)
            spent += sum(own)
        ratios.append(medians["a"] / medians["b"])
    threads = torch.get_num_threads()

    def stats(key: str) -> TimingStats:
        return TimingStats(tuple(times[key]), warm[key][0], warm[key][1], max_rounds * steps_per_round, stopped, timer.name, threads)

    return PairedStats(stats("a"), stats("b"), tuple(ratios), level)
