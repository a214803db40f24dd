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
    compile: bool,
    timer: StepTimer | None,
) -> tuple[TimingStats, dict[str, Any]]:
    dev = torch.device(device)
    resolve_autocast(dtype, dev)  # validates dtype before any work
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    h, w = _image_hw(img_size)
    model = model.eval().to(dev)
    runner: Callable[..., Any] = torch.compile(model) if compile else model
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, h, w, generator=gen).to(dev)

    def step() -> None:
        with torch.inference_mode(), autocast(dtype, dev):
            runner(images)

    if compile:
        warmup = max(warmup, 1)  # compilation happens in the first call: never time it
    stats = measure(step, warmup, repeats, timer or default_timer(dev), time_budget_s)
    meta = {"batch_size": batch_size, "img_size": [h, w], "device": str(dev), "dtype": dtype, "compile": compile}
    return stats, meta


def measure_throughput(
    model: nn.Module,
    batch_size: int,
    img_size: int | Sequence[int],
    device: torch.device | str,
    dtype: str = "fp32",
    warmup: int = 10,
    repeats: int = 40,
    time_budget_s: float | None = None,
    compile: bool = False,
    timer: StepTimer | None = None,
) -> dict[str, Any]:
    """Images/s of ``model`` on random (batch_size, 3, H, W) inputs.

    The model is put in eval mode and moved to ``device`` (in place). ``dtype``: "fp32",
    "fp16" or "bf16"; the latter two run under ``torch.autocast`` (fp16 is refused on the
    CPU). ``compile=True`` wraps the model in ``torch.compile`` and forces >= 1 warm-up step.
    Returns the meta data, ``images_per_s`` (from the median step) with
    ``images_per_s_low``/``_high`` (at the max/min step), and :meth:`TimingStats.summary`.
    """
    stats, meta = _run(model, batch_size, img_size, device, dtype, warmup, repeats, time_budget_s, compile, timer)
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
    compile: bool = False,
    timer: StepTimer | None = None,
) -> dict[str, Any]:
    """Batch-1 latency of ``model``: ``latency_ms_p50`` (median) and ``latency_ms_p90``, in
    milliseconds, plus :meth:`TimingStats.summary`. Same protocol and arguments as
    :func:`measure_throughput`."""
    stats, meta = _run(model, 1, img_size, device, dtype, warmup, repeats, time_budget_s, compile, timer)
    return {**meta, "latency_ms_p50": stats.latency_ms_p50, "latency_ms_p90": stats.latency_ms_p90, **stats.summary()}


@dataclass(frozen=True)
class PairedStats:
    """Two step functions timed in alternating rounds (A then B, round after round), so
    drift and other load on a shared machine hit both alike.

    a, b: all timed steps of each (warm-up excluded). round_ratios: per round, median A
    step / median B step (> 1: B is faster). ``speedup`` = the median of the round
    ratios: each compares steps taken moments apart, so slow drift cancels (a ratio of
    the overall medians would mix steps from different minutes).
    """

    a: TimingStats
    b: TimingStats
    round_ratios: tuple[float, ...]

    @property
    def speedup(self) -> float:
        return statistics.median(self.round_ratios)


def measure_paired(
    step_a: Callable[[], Any],
    step_b: Callable[[], Any],
    timer: StepTimer,
    warmup: int = 2,
    steps_per_round: int = 2,
    max_rounds: int = 10,
    min_rounds: int = 2,
    time_budget_s: float | None = None,
) -> PairedStats:
    """Alternate ``steps_per_round`` timed steps of A and of B for up to ``max_rounds``
    rounds (A and B each warmed up ``warmup`` steps before the first round). With a budget
    (seconds of measured step time, warm-up included) rounds stop once it is spent, never
    before ``min_rounds``, and each warm-up stops early as :func:`measure` does, against
    half the budget (so after one step once it has used 1/8 of the whole)."""
    if steps_per_round < 1 or max_rounds < 1:
        raise OptionError(f"need steps_per_round >= 1 and max_rounds >= 1, got {steps_per_round}, {max_rounds}")
    times: dict[str, list[float]] = {"a": [], "b": []}
    warm = {"a": (0, 0.0), "b": (0, 0.0)}
    ratios: list[float] = []
    spent, stopped = 0.0, False
    for r in range(max_rounds):
        if time_budget_s is not None and r >= min_rounds and spent >= time_budget_s:
            stopped = True
            break
        medians = {}
        for key, step in (("a", step_a), ("b", step_b)):
            if r == 0 and time_budget_s is not None:  # budgeted warm-up
                s = measure(step, warmup, steps_per_round, timer, time_budget_s / 2, min_repeats=steps_per_round)
            else:
                s = measure(step, warmup if r == 0 else 0, steps_per_round, timer)
            if r == 0:
                warm[key] = (s.warmup_steps, s.warmup_time_s)
            times[key].extend(s.step_times_s)
            medians[key] = s.median_s
            spent += sum(s.step_times_s) + s.warmup_time_s
        ratios.append(medians["a"] / medians["b"])
    threads = torch.get_num_threads()

    def stats(key: str) -> TimingStats:
        return TimingStats(tuple(times[key]), warm[key][0], warm[key][1], max_rounds * steps_per_round, stopped, timer.name, threads)

    return PairedStats(stats("a"), stats("b"), tuple(ratios))
