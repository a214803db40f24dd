"""Energy per image: a hardware energy counter read around windows of timed batches.

Units: energy in joules (J), time in seconds (s); a record's energy figures are J per
image (``energy_j_per_img``) and images per J (``energy_img_per_j``).

Counters (:class:`EnergyCounter`): something that reports the energy used so far, in J,
with a known resolution (J) and update period (s).

* :class:`NvmlEnergyCounter` (CUDA devices): ``nvmlDeviceGetTotalEnergyConsumption``, the
  board's energy in millijoules since the driver was loaded (Volta and newer). Resolution
  1 mJ, updated about every 100 ms. It is an unsigned 64-bit count of mJ: a wrap would
  take ~1.8e16 J (centuries at 1 kW), so a reading BELOW the previous one is taken to be a
  driver reload or device reset, never a wrap: :class:`CounterWentBack` is raised and the
  window that saw it is thrown away (:func:`measure_energy_paired` measures it again, at
  most :data:`MAX_RESETS` times per measurement).
* :class:`RaplEnergyCounter` (CPU): Linux powercap, ``<root>/intel-rapl:N/energy_uj`` of
  every package domain N, summed (AMD's driver uses the same names). Sub-zones
  (``intel-rapl:N:M``: cores, uncore, DRAM) lie inside their package and are left out so
  nothing is counted twice; so are ``intel-rapl-mmio`` zones (a second view of the
  package). Each domain's counter wraps at ``max_energy_range_uj``: a reading below the
  previous one is taken as exactly one wrap, delta = (max_energy_range_uj - previous) +
  new, i.e. the counter is treated as counting modulo max_energy_range_uj (values
  0 .. max - 1; the "+1" variant, modulo max + 1, differs by 1 uJ per wrap). One wrap at
  most between two reads: windows last seconds, a wrap takes minutes. RAPL covers the
  whole package, so other processes on the machine are counted too.

Without a counter (no CUDA driver, nvidia-ml-py missing, a GPU without the counter, no
powercap tree, ``energy_uj`` readable by root only) the opener returns None and a one-line
reason, and the record's energy fields are None with that reason.

Measurement (:func:`measure_energy_paired`, :func:`measure_energy_alone`): a window is n
calls of a step (one batch forward), with ``sync()`` (a device synchronise; a no-op on
the CPU) before the first read and after the last step, so the device's queued work is
inside the window. n comes from a step-time hint (the throughput phase's median step) so
that a window lasts at least :func:`window_seconds` (1 s, and at least 10 counter update
periods); one warm window per side runs first, uncounted (power and clocks settle; if it
was shorter than wanted, n is raised from its duration). A variant runs in ABBA order
against its dense twin (pair k: dense then variant for even k, variant then dense for
odd k), so drift of temperature, clocks or other load cancels; per pair, ratio = variant
J/image / dense J/image; ``energy_ratio`` is the median of the pair ratios, with the
distribution-free 95% interval of :func:`tosa_bench.measure.timing.median_interval`,
widened to at least the counter's resolution relative to the window energy of each side
(:meth:`EnergyResult.interval`). J/image of a side = median over its windows of window
energy / images in the window.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from tosa_bench.measure.timing import median_interval

__all__ = [
    "EnergyCounter",
    "CounterWentBack",
    "NvmlEnergyCounter",
    "RaplEnergyCounter",
    "open_nvml_counter",
    "open_rapl_counter",
    "open_counter",
    "window_seconds",
    "steps_for",
    "EnergyWindow",
    "EnergyResult",
    "measure_energy_alone",
    "measure_energy_paired",
    "energy_fields",
    "unmeasured",
    "ENERGY_FIELDS",
    "ENERGY_CONVENTION",
]

#: a window lasts at least this long (s) ...
MIN_WINDOW_S = 1.0
#: ... and at least this many counter update periods
MIN_UPDATES = 10
#: windows per side (paired: pairs); 6 is the fewest whose median has a 95% interval
WINDOWS = 6
#: how often a counter may go back during one measurement before it is given up
MAX_RESETS = 2
#: n is raised by this much over what the hint or the warm window asks (windows come out >= the target)
MARGIN = 1.1
RAPL_ROOT = "/sys/class/powercap"
#: record fields of the energy axis, in record order
ENERGY_FIELDS = ("energy_j_per_img", "energy_img_per_j", "energy_dense_j_per_img", "energy_ratio", "energy_ratio_ci_low",
                 "energy_ratio_ci_high", "energy_window_s", "energy_windows", "energy_method", "energy_reason")
ENERGY_CONVENTION = ("J per image: hardware energy counter (GPU: NVML board energy; CPU: RAPL packages) over windows of "
                     ">= 1 s of timed batches, window energy / images; ratio = variant / dense twin, windows in ABBA order, "
                     "median of pair ratios with 95% interval")


class CounterWentBack(RuntimeError):
    """The counter read less than before and it cannot be a wrap (NVML: a driver reload
    or device reset): the window it falls in is not valid."""


class EnergyCounter(Protocol):
    """Cumulative energy in joules since an arbitrary origin, never decreasing.

    method: how it is read, in words (goes into the record). resolution_j: the smallest
    step of the count, J. update_period_s: how often the hardware updates it, s.
    ``read_j`` may raise :class:`CounterWentBack`; ``close`` releases it."""

    method: str
    resolution_j: float
    update_period_s: float

    def read_j(self) -> float: ...

    def close(self) -> None: ...


# -- NVML ----------------------------------------------------------------------------------
class NvmlEnergyCounter:
    """``nvmlDeviceGetTotalEnergyConsumption`` of one GPU (mJ since driver load) as J."""

    method = "nvml total energy counter (mJ), device sync around >=1 s windows"
    resolution_j = 1e-3
    update_period_s = 0.1

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml, self._handle = nvml, handle
        self._last_mj: int | None = None

    def read_j(self) -> float:
        """The counter in J; :class:`CounterWentBack` when it is below the last reading
        (taken as a reset, not a 2**64 mJ wrap: module docstring)."""
        mj = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        last, self._last_mj = self._last_mj, mj
        if last is not None and mj < last:
            raise CounterWentBack(f"NVML energy counter went back from {last} mJ to {mj} mJ (driver reload or device reset?)")
        return mj / 1e3

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def _import_pynvml() -> Any:
    import pynvml  # provided by the nvidia-ml-py package

    return pynvml


def open_nvml_counter(nvml_index: int = 0, nvml: Any = None) -> tuple[NvmlEnergyCounter | None, str | None]:
    """The energy counter of NVML device ``nvml_index``, or (None, reason) when there is
    none: nvidia-ml-py not installed, ``nvmlInit`` failing (no driver), no such device, or
    a device without the counter (pre-Volta: NVMLError NotSupported). ``nvml``: the pynvml
    module or a fake with the same functions."""
    try:
        nvml = nvml if nvml is not None else _import_pynvml()
    except ImportError as exc:
        return None, f"unavailable: nvidia-ml-py not installed ({exc})"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError: no driver, no library
        return None, f"unavailable: nvmlInit failed: {exc}"
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
        return None, f"unavailable: NVML device {nvml_index} has no total energy counter: {exc}"
    return NvmlEnergyCounter(nvml, handle), None


# -- RAPL ----------------------------------------------------------------------------------
_PACKAGE = re.compile(r"intel-rapl:\d+")


def rapl_delta_uj(previous: int, new: int, max_range_uj: int) -> int:
    """Energy (uJ) between two readings of one RAPL domain: ``new - previous``, or across
    one wrap (new < previous) ``(max_range_uj - previous) + new`` (module docstring)."""
    return new - previous if new >= previous else (max_range_uj - previous) + new


class RaplEnergyCounter:
    """The package domains of a powercap tree, summed, wraps undone (module docstring)."""

    method = "RAPL package energy (powercap energy_uj, uJ), summed over packages, >=1 s windows"
    resolution_j = 2.0**-14  # the usual RAPL energy status unit (~61 uJ); the file counts uJ
    update_period_s = 1e-3

    def __init__(self, domains: list[tuple[Path, int]]) -> None:
        self._domains = domains  # (energy_uj path, max_energy_range_uj)
        self._last = [int(p.read_text()) for p, _ in domains]
        self._total_uj = 0

    def read_j(self) -> float:
        """Energy since the counter was opened, J (each domain read once)."""
        now = [int(p.read_text()) for p, _ in self._domains]
        self._total_uj += sum(rapl_delta_uj(a, b, m) for a, b, (_, m) in zip(self._last, now, self._domains))
        self._last = now
        return self._total_uj / 1e6

    def close(self) -> None:
        pass


def _read_uj(path: Path) -> tuple[int | None, str | None]:
    """An integer file of the powercap tree, or (None, why it cannot be read)."""
    try:
        return int(path.read_text().strip()), None
    except PermissionError:
        return None, f"unavailable: cannot read {path}: permission denied (energy_uj is root-only on many kernels)"
    except OSError as exc:
        return None, f"unavailable: cannot read {path}: {exc.strerror or exc}"
    except ValueError:
        return None, f"unavailable: {path} does not hold an integer"


def open_rapl_counter(root: str | Path = RAPL_ROOT) -> tuple[RaplEnergyCounter | None, str | None]:
    """The RAPL packages under ``root`` as one counter, or (None, reason): no such tree,
    no ``intel-rapl:N`` package domain, or a file that cannot be read (which, and why)."""
    base = Path(root)
    if not base.is_dir():
        return None, f"unavailable: no {base} (no RAPL powercap interface on this machine)"
    packages = sorted(d for d in base.iterdir() if _PACKAGE.fullmatch(d.name))
    if not packages:
        return None, f"unavailable: no package domain intel-rapl:N under {base}"
    domains = []
    for d in packages:
        value, why = _read_uj(d / "energy_uj")
        top, why_top = _read_uj(d / "max_energy_range_uj")
        if why or why_top:
            return None, why or why_top
        domains.append((d / "energy_uj", top))
    return RaplEnergyCounter(domains), None


def open_counter(device: str) -> tuple[EnergyCounter | None, str | None]:
    """The counter for a point's device: NVML for ``cuda[:N]``, RAPL for ``cpu``."""
    if device.startswith("cuda"):
        from tosa_bench.measure.memory import nvml_index_for_cuda_device

        index = int(device.split(":")[1]) if ":" in device else 0
        return open_nvml_counter(nvml_index_for_cuda_device(index))
    return open_rapl_counter()


# -- windows -------------------------------------------------------------------------------
def window_seconds(counter: EnergyCounter) -> float:
    """The shortest window, s: :data:`MIN_WINDOW_S`, and :data:`MIN_UPDATES` update periods."""
    return max(MIN_WINDOW_S, MIN_UPDATES * counter.update_period_s)


def steps_for(step_s: float, window_s: float) -> int:
    """Steps of ``step_s`` seconds that fill ``window_s`` (with :data:`MARGIN`), >= 1."""
    if not step_s > 0 or not math.isfinite(step_s):
        raise ValueError(f"step time hint must be a positive number of seconds, got {step_s}")
    return max(1, math.ceil(MARGIN * window_s / step_s))


@dataclass(frozen=True)
class EnergyWindow:
    """One window: ``side`` ("point" or "dense"), ``steps`` run, ``images`` in them,
    ``joules`` counted and ``seconds`` it lasted."""

    side: str
    steps: int
    images: int
    joules: float
    seconds: float

    @property
    def j_per_img(self) -> float:
        return self.joules / self.images


def run_window(counter: EnergyCounter, step: Callable[[], Any], steps: int, batch_size: int, side: str,
               sync: Callable[[], Any], clock: Callable[[], float]) -> EnergyWindow:
    """``steps`` calls of ``step`` between two counter reads, the device synchronised
    before the first read and after the last step."""
    sync()
    t0, e0 = clock(), counter.read_j()
    for _ in range(steps):
        step()
    sync()
    e1, t1 = counter.read_j(), clock()
    return EnergyWindow(side, steps, steps * batch_size, e1 - e0, t1 - t0)


@dataclass(frozen=True)
class EnergyResult:
    """The counted windows of a measurement (warm windows left out), its pair ratios
    (variant J/image / dense J/image per ABBA pair; empty when measured alone), and the
    counter's ``method`` and ``resolution_j``."""

    windows: tuple[EnergyWindow, ...]
    pair_ratios: tuple[float, ...]
    method: str
    resolution_j: float
    level: float = 0.95

    def j_per_img(self, side: str = "point") -> float | None:
        """Median J/image over the windows of ``side``; None without any."""
        own = [w.j_per_img for w in self.windows if w.side == side]
        return statistics.median(own) if own else None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.pair_ratios) if self.pair_ratios else None

    def floor(self) -> float:
        """The relative half-width the counter's resolution alone allows the ratio: one
        resolution step against the median window energy of each side, added."""
        total = 0.0
        for side in ("point", "dense"):
            energies = [w.joules for w in self.windows if w.side == side]
            median = statistics.median(energies) if energies else 0.0
            total += self.resolution_j / median if median > 0 else math.inf
        return total

    def interval(self) -> tuple[float, float] | None:
        """The 95% interval of the ratio: order statistics of the pair ratios, widened to
        +-:meth:`floor` of the ratio where that is wider; None when measured alone."""
        if not self.pair_ratios:
            return None
        low, high, _ = median_interval(self.pair_ratios, self.level)
        r, f = self.ratio, self.floor()
        return min(low, r * (1 - f)), max(high, r * (1 + f))


def _warm_steps(counter: EnergyCounter, step: Callable[[], Any], hint_s: float, batch_size: int, side: str,
                sync: Callable[[], Any], clock: Callable[[], float]) -> int:
    """Run the uncounted warm window of ``side``; the steps a counted window takes (raised
    when the warm window came out shorter than :func:`window_seconds`)."""
    target = window_seconds(counter)
    n = steps_for(hint_s, target)
    try:
        warm = run_window(counter, step, n, batch_size, side, sync, clock)
    except CounterWentBack:
        return n
    if 0 < warm.seconds < target:
        n = max(n + 1, math.ceil(MARGIN * n * target / warm.seconds))
    return n


def measure_energy_paired(counter: EnergyCounter, dense_step: Callable[[], Any], point_step: Callable[[], Any],
                          batch_size: int, dense_hint_s: float, point_hint_s: float,
                          sync: Callable[[], Any] = lambda: None, clock: Callable[[], float] = time.perf_counter,
                          pairs: int = WINDOWS) -> EnergyResult:
    """``pairs`` ABBA pairs of windows, dense twin against the point (module docstring).
    A window during which the counter went back is dropped and its pair measured again;
    :class:`CounterWentBack` propagates after :data:`MAX_RESETS` such pairs."""
    steps = {"dense": dense_step, "point": point_step}
    n = {"dense": _warm_steps(counter, dense_step, dense_hint_s, batch_size, "dense", sync, clock),
         "point": _warm_steps(counter, point_step, point_hint_s, batch_size, "point", sync, clock)}
    windows: list[EnergyWindow] = []
    ratios: list[float] = []
    resets = 0
    while len(ratios) < pairs:
        order = ("dense", "point") if len(ratios) % 2 == 0 else ("point", "dense")
        try:
            pair = {s: run_window(counter, steps[s], n[s], batch_size, s, sync, clock) for s in order}
        except CounterWentBack:
            resets += 1
            if resets > MAX_RESETS:
                raise
            continue
        if pair["dense"].joules <= 0:
            raise ValueError(f"the counter did not advance over a {pair['dense'].seconds:.2f} s window of the dense twin")
        windows += [pair[s] for s in order]
        ratios.append(pair["point"].j_per_img / pair["dense"].j_per_img)
    return EnergyResult(tuple(windows), tuple(ratios), counter.method, counter.resolution_j)


def measure_energy_alone(counter: EnergyCounter, step: Callable[[], Any], batch_size: int, hint_s: float,
                         sync: Callable[[], Any] = lambda: None, clock: Callable[[], float] = time.perf_counter,
                         windows: int = WINDOWS) -> EnergyResult:
    """``windows`` windows of one step (a dense point measured alone); no ratio."""
    n = _warm_steps(counter, step, hint_s, batch_size, "point", sync, clock)
    out: list[EnergyWindow] = []
    resets = 0
    while len(out) < windows:
        try:
            out.append(run_window(counter, step, n, batch_size, "point", sync, clock))
        except CounterWentBack:
            resets += 1
            if resets > MAX_RESETS:
                raise
    return EnergyResult(tuple(out), (), counter.method, counter.resolution_j)


# -- record fields -------------------------------------------------------------------------
def unmeasured(reason: str, method: str | None = None) -> dict[str, Any]:
    """The energy fields of a record without energy: all None, ``energy_reason`` set."""
    out: dict[str, Any] = {k: None for k in ENERGY_FIELDS}
    out.update(energy_method=method, energy_reason=reason)
    return out


def energy_fields(result: EnergyResult) -> dict[str, Any]:
    """The record's energy fields from a measurement (J/image, images/J, ratio and its
    interval, the shortest counted window in s, the number of counted windows)."""
    own = result.j_per_img("point")
    interval = result.interval()
    return {
        "energy_j_per_img": own,
        "energy_img_per_j": 1.0 / own if own else None,
        "energy_dense_j_per_img": result.j_per_img("dense"),
        "energy_ratio": result.ratio,
        "energy_ratio_ci_low": interval[0] if interval else None,
        "energy_ratio_ci_high": interval[1] if interval else None,
        "energy_window_s": min(w.seconds for w in result.windows),
        "energy_windows": len(result.windows),
        "energy_method": result.method,
        "energy_reason": None,
    }
