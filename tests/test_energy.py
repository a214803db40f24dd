"""Energy per image (tosa_bench/measure/energy.py): the NVML reader with a fake NVML
module, the RAPL reader on a fake powercap tree, windows sized from the step hint, the
ABBA paired ratio and its interval on a fake counter and clock, the record fields of
``measure_point`` and of a tiny real sweep, and the suite key. One test reads the real
NVML counter and is skipped without a CUDA device."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import tosa_bench.measure.energy as energy
import tosa_bench.measure.point as point_mod
import tosa_bench.measure.timing as timing
from tosa_bench.errors import SuiteError
from tosa_bench.measure.energy import (
    ENERGY_FIELDS,
    CounterWentBack,
    EnergyResult,
    EnergyWindow,
    measure_energy_alone,
    measure_energy_paired,
    open_nvml_counter,
    open_rapl_counter,
    rapl_delta_uj,
    run_window,
    steps_for,
    window_seconds,
)
from tosa_bench.measure.spec import Point, Settings
from tosa_bench.measure.timing import PairedStats, TimingStats, median_interval


# ----------------------------------------------------------------------------- fake NVML
class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """pynvml's functions over a list of counter readings (mJ), one per call."""

    def __init__(self, readings_mj=(), init_error=None, energy_error=None) -> None:
        self.readings = list(readings_mj)
        self.init_error, self.energy_error = init_error, energy_error
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index):
        self.calls.append(f"handle {index}")
        return ("handle", index)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.energy_error:
            raise self.energy_error
        return self.readings.pop(0)


class Clock:
    """A fake clock: ``now`` seconds, moved by the fake steps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_window_of_known_steps_gives_the_hand_computed_j_per_image() -> None:
    # the opener's probe reads once; then the window reads 1 000 000 mJ and 1 004 500 mJ
    nvml = FakeNvml([999_000, 1_000_000, 1_004_500])
    counter, reason = open_nvml_counter(3, nvml=nvml)
    assert reason is None and nvml.calls == ["init", "handle 3"]
    clock, log = Clock(), []

    def step():
        log.append("step")
        clock.now += 0.5

    w = run_window(counter, step, 3, 5, "point", lambda: log.append("sync"), clock)
    # 4.5 J over 3 steps of 5 images: 4.5 / 15 = 0.3 J per image, 1.5 s
    assert (w.joules, w.images, w.seconds) == (pytest.approx(4.5), 15, 1.5)
    assert w.j_per_img == pytest.approx(0.3, rel=1e-12)
    assert log == ["sync", "step", "step", "step", "sync"]  # synchronised before the first read and after the last step
    counter.close()
    assert nvml.calls[-1] == "shutdown"
    assert (counter.resolution_j, counter.update_period_s) == (1e-3, 0.1)
    assert counter.method == "nvml total energy counter (mJ), device sync around >=1 s windows"


def test_an_nvml_counter_going_back_is_a_reset_not_a_wrap() -> None:
    counter, _ = open_nvml_counter(0, nvml=FakeNvml([0, 5_000, 7_000, 10]))
    assert counter.read_j() == 5.0 and counter.read_j() == 7.0
    with pytest.raises(CounterWentBack, match="from 7000 mJ to 10 mJ"):
        counter.read_j()  # 2**64 mJ would be ~1.8e16 J: a decrease is a reload, never a wrap


def test_a_window_the_counter_went_back_in_is_dropped_and_measured_again() -> None:
    # readings: probe, warm window (2), window 1 (2), window 2 goes back at its end, then 6 good windows
    seq = [0, 0, 2_000, 2_000, 4_000, 4_000, 100]
    seq += [100 + 2_000 * i + d for i in range(6) for d in (0, 2_000)]
    counter, _ = open_nvml_counter(0, nvml=FakeNvml(seq))
    clock = Clock()
    result = measure_energy_alone(counter, lambda: setattr(clock, "now", clock.now + 1.5), 2, hint_s=1.5, clock=clock)
    assert len(result.windows) == 6 and all(w.joules == pytest.approx(2.0) for w in result.windows)
    # more resets than MAX_RESETS: given up
    bad = open_nvml_counter(0, nvml=FakeNvml([0] + [5, 1] * 20))[0]
    with pytest.raises(CounterWentBack):
        measure_energy_alone(bad, lambda: setattr(clock, "now", clock.now + 1.5), 2, hint_s=1.5, clock=clock)


def test_a_device_without_the_counter_gives_none_and_a_reason() -> None:
    nvml = FakeNvml(energy_error=FakeNVMLError("Not Supported"))
    counter, reason = open_nvml_counter(1, nvml=nvml)
    assert counter is None and reason == "unavailable: NVML device 1 has no total energy counter: Not Supported"
    assert nvml.calls[-1] == "shutdown"
    counter, reason = open_nvml_counter(0, nvml=FakeNvml(init_error=FakeNVMLError("Driver Not Loaded")))
    assert counter is None and reason == "unavailable: nvmlInit failed: Driver Not Loaded"


def test_without_nvidia_ml_py_there_is_no_counter(monkeypatch) -> None:
    def missing():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(energy, "_import_pynvml", missing)
    counter, reason = open_nvml_counter(0)
    assert counter is None and reason.startswith("unavailable: nvidia-ml-py not installed") and "\n" not in reason


# ----------------------------------------------------------------------------- fake powercap
def _zone(root: Path, name: str, uj: int, top: int = 1_000_000) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{top}\n")
    return d


@pytest.fixture
def powercap(tmp_path) -> Path:
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", 100)
    _zone(root, "intel-rapl:1", 5_000)
    _zone(root, "intel-rapl:0:0", 50)  # a sub-zone (cores) of package 0: inside its count already
    _zone(root, "intel-rapl-mmio:0", 70)  # a second view of the package
    return root


def test_rapl_sums_the_packages_and_ignores_subzones(powercap) -> None:
    counter, reason = open_rapl_counter(powercap)
    assert reason is None and counter.read_j() == 0.0
    (powercap / "intel-rapl:0" / "energy_uj").write_text("1100")
    (powercap / "intel-rapl:1" / "energy_uj").write_text("7000")
    (powercap / "intel-rapl:0:0" / "energy_uj").write_text("999999")  # must change nothing
    (powercap / "intel-rapl-mmio:0" / "energy_uj").write_text("999999")
    assert counter.read_j() == pytest.approx((1_000 + 2_000) / 1e6, rel=1e-12)


def test_rapl_wraps_at_max_energy_range(powercap) -> None:
    (powercap / "intel-rapl:0" / "energy_uj").write_text("999900")  # 100 uJ below the range of 1 000 000
    counter, _ = open_rapl_counter(powercap)
    (powercap / "intel-rapl:0" / "energy_uj").write_text("250")  # wrapped: (1 000 000 - 999 900) + 250 = 350 uJ
    assert counter.read_j() == pytest.approx(350e-6, rel=1e-12)
    assert rapl_delta_uj(999_900, 250, 1_000_000) == 350 and rapl_delta_uj(10, 30, 1_000_000) == 20


def test_an_unreadable_rapl_file_gives_no_counter_and_names_it(powercap, monkeypatch) -> None:
    target = powercap / "intel-rapl:1" / "energy_uj"
    real = Path.read_text

    def read_text(self, *a, **k):
        if self == target:
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)  # as root chmod would not stop the read
    counter, reason = open_rapl_counter(powercap)
    assert counter is None and reason == f"unavailable: cannot read {target}: permission denied (energy_uj is root-only on many kernels)"


def test_no_powercap_tree_or_no_package_gives_a_reason(tmp_path) -> None:
    assert open_rapl_counter(tmp_path / "none") == (None, f"unavailable: no {tmp_path / 'none'} (no RAPL powercap interface on this machine)")
    _zone(tmp_path / "pc", "intel-rapl:0:0", 1)
    assert open_rapl_counter(tmp_path / "pc") == (None, f"unavailable: no package domain intel-rapl:N under {tmp_path / 'pc'}")


# ----------------------------------------------------------------------------- windows
class FakeCounter:
    """A counter whose joules the fake steps add; resolution and period as given."""

    method = "fake counter"

    def __init__(self, resolution_j: float = 1e-3, update_period_s: float = 0.1) -> None:
        self.resolution_j, self.update_period_s = resolution_j, update_period_s
        self.joules = 0.0

    def read_j(self) -> float:
        return self.joules

    def close(self) -> None:
        pass


def test_the_window_length_comes_from_the_step_hint() -> None:
    assert window_seconds(FakeCounter(update_period_s=0.1)) == 1.0  # 1 s, and 10 updates of 100 ms
    assert window_seconds(FakeCounter(update_period_s=0.5)) == 5.0  # 10 updates are longer than 1 s
    assert steps_for(0.01, 1.0) == 110 and steps_for(3.0, 1.0) == 1  # ceil(1.1 x window / step), at least 1
    with pytest.raises(ValueError):
        steps_for(0.0, 1.0)


@pytest.mark.parametrize("hint, real", [(0.01, 0.01), (0.04, 0.01)])
def test_every_counted_window_lasts_at_least_a_second(hint, real) -> None:
    """With a right hint, and with one 4x too slow (too few steps): the warm window's
    duration raises n, so no counted window is shorter than 1 s."""
    counter, clock = FakeCounter(), Clock()

    def step():
        clock.now += real
        counter.joules += 1.0

    result = measure_energy_alone(counter, step, 1, hint_s=hint, clock=clock)
    assert len(result.windows) == 6 and min(w.seconds for w in result.windows) >= 1.0


def _paired_setup(point_joules):
    """Dense steps cost 2 J per batch of 4, the point's steps the next value of
    ``point_joules`` (drawn once per point window); every step takes 0.25 s. ``run``
    stands in for run_window and logs which side each window ran."""
    counter, clock, order = FakeCounter(), Clock(), []
    costs, current = iter(point_joules), {}

    def dense():
        clock.now += 0.25
        counter.joules += 2.0

    def point():
        clock.now += 0.25
        counter.joules += current["point"]

    def run(counter_, step, steps, batch, side, sync_, clock_, real=run_window):
        order.append(side)
        if side == "point":
            current["point"] = next(costs)
        return real(counter_, step, steps, batch, side, sync_, clock_)

    return counter, clock, dense, point, order, run


def test_paired_windows_run_abba_and_give_the_ratio_and_interval(monkeypatch) -> None:
    per_window = [1.0] + [1.0, 1.1, 0.9, 1.2, 0.8, 1.0]  # the point's warm window first, then 6 pairs
    counter, clock, dense, point, order, run = _paired_setup(per_window)
    monkeypatch.setattr(energy, "run_window", run)
    result = measure_energy_paired(counter, dense, point, 4, dense_hint_s=0.25, point_hint_s=0.25, clock=clock)
    # warm dense, warm point, then pairs: dense-point, point-dense, ...
    assert order == ["dense", "point"] + ["dense", "point", "point", "dense"] * 3
    n = steps_for(0.25, 1.0)  # 5 steps of 0.25 s: 1.25 s windows
    assert all(w.steps == n and w.seconds == pytest.approx(1.25) for w in result.windows)
    # dense: 2 J per 4 images = 0.5 J/img; the point's per pair: cost / 4
    ratios = [c / 4 / 0.5 for c in per_window[1:]]
    assert result.pair_ratios == pytest.approx(ratios, rel=1e-12)
    assert result.j_per_img("dense") == pytest.approx(0.5)
    assert result.ratio == pytest.approx(sorted(ratios)[2] / 2 + sorted(ratios)[3] / 2)
    low, high, _ = median_interval(ratios)
    assert result.interval() == pytest.approx((low, high))  # far wider than the resolution floor
    fields = energy.energy_fields(result)
    assert set(fields) == set(ENERGY_FIELDS) and fields["energy_reason"] is None
    assert fields["energy_windows"] == 12 and fields["energy_window_s"] == pytest.approx(1.25)
    assert fields["energy_dense_j_per_img"] == pytest.approx(0.5)
    assert fields["energy_img_per_j"] == pytest.approx(1 / fields["energy_j_per_img"])
    assert (fields["energy_ratio_ci_low"], fields["energy_ratio_ci_high"]) == pytest.approx((low, high))


def test_the_interval_is_never_narrower_than_the_counter_resolution() -> None:
    """Identical pairs give a zero-width order-statistic interval; the floor is one
    resolution step against each side's window energy: 0.01 J / 1 J + 0.01 J / 2 J."""
    wins = tuple(EnergyWindow(s, 5, 20, j, 1.2) for _ in range(6) for s, j in (("dense", 2.0), ("point", 1.0)))
    result = EnergyResult(wins, (0.5,) * 6, "fake", resolution_j=0.01)
    assert result.floor() == pytest.approx(0.015)
    assert result.interval() == pytest.approx((0.5 * 0.985, 0.5 * 1.015))
    alone = EnergyResult(wins[1::2], (), "fake", 0.01)
    assert alone.interval() is None and alone.ratio is None and alone.j_per_img("dense") is None


def test_a_dense_window_without_energy_is_refused() -> None:
    counter, clock = FakeCounter(), Clock()
    with pytest.raises(ValueError, match="did not advance"):
        measure_energy_paired(counter, lambda: setattr(clock, "now", clock.now + 0.5), lambda: None, 1, 0.5, 0.5, clock=clock)


# ----------------------------------------------------------------------------- measure_point
def _fake_paired(step_a, step_b, timer, **kw):
    _fake_paired.steps = (step_a, step_b)
    a = TimingStats((0.002,) * 6, 1, 0.002, 6, False, "fake", 1)
    b = TimingStats((0.001,) * 6, 1, 0.001, 6, False, "fake", 1)
    return PairedStats(a, b, (2.0,) * 6)


def test_a_variant_measures_energy_with_the_very_steps_it_timed_after_timing(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(timing, "measure_paired", lambda *a, **k: seen.append("timed") or _fake_paired(*a, **k))
    monkeypatch.setattr(energy, "open_counter", lambda device: (FakeCounter(), None))

    def paired(counter, dense_step, point_step, batch, dense_hint, hint, sync):
        seen.append("energy")
        assert (dense_step, point_step) == _fake_paired.steps  # the same callables, not new ones
        assert (batch, dense_hint, hint) == (3, pytest.approx(0.002), pytest.approx(0.001))
        wins = tuple(EnergyWindow(s, 1, 3, j, 1.0) for _ in range(6) for s, j in (("dense", 3.0), ("point", 1.5)))
        return EnergyResult(wins, (0.5,) * 6, "fake counter", 1e-3)

    monkeypatch.setattr(energy, "measure_energy_paired", paired)
    rec = point_mod.measure_point(Point("test_tiny", "tosa", {"keep": 0.5}, batch_size=3, device="cpu"),
                                  Settings(latency=False, memory=False))
    assert seen == ["timed", "energy"]
    assert rec["energy_j_per_img"] == 0.5 and rec["energy_dense_j_per_img"] == 1.0 and rec["energy_ratio"] == 0.5
    assert rec["energy_method"] == "fake counter" and rec["energy_reason"] is None and rec["energy_windows"] == 12


def test_a_dense_point_measures_its_energy_alone(monkeypatch) -> None:
    monkeypatch.setattr(energy, "open_counter", lambda device: (FakeCounter(), None))
    calls = []

    def alone(counter, step, batch, hint, sync):
        calls.append((batch, hint))
        step()  # the point's own forward, runnable
        return EnergyResult((EnergyWindow("point", 2, 4, 0.8, 1.1),), (), "fake counter", 1e-3)

    monkeypatch.setattr(energy, "measure_energy_alone", alone)
    rec = point_mod.measure_point(Point("test_tiny", "dense", batch_size=2, device="cpu"),
                                  Settings(latency=False, memory=False, warmup=1, repeats=3))
    assert len(calls) == 1 and calls[0][0] == 2 and calls[0][1] == pytest.approx(rec["step_ms_median"] / 1e3)
    assert rec["energy_j_per_img"] == pytest.approx(0.2) and rec["energy_img_per_j"] == pytest.approx(5.0)
    assert rec["energy_ratio"] is None and rec["energy_dense_j_per_img"] is None and rec["energy_ratio_ci_low"] is None


def test_a_counter_failing_mid_measurement_leaves_a_reason(monkeypatch) -> None:
    monkeypatch.setattr(timing, "measure_paired", _fake_paired)
    monkeypatch.setattr(energy, "open_counter", lambda device: (FakeCounter(), None))

    def broken(*a, **k):
        raise CounterWentBack("NVML energy counter went back from 9 mJ to 1 mJ")

    monkeypatch.setattr(energy, "measure_energy_paired", broken)
    rec = point_mod.measure_point(Point("test_tiny", "evit", {"keep": 0.5}, batch_size=2, device="cpu"),
                                  Settings(latency=False, memory=False))
    assert rec["energy_ratio"] is None and rec["energy_reason"] == "unavailable: NVML energy counter went back from 9 mJ to 1 mJ"
    assert rec["energy_method"] == "fake counter"


def test_every_record_of_a_tiny_sweep_has_the_energy_fields(tmp_path) -> None:
    from tosa_bench.results.store import read_records
    from tosa_bench.sweep.runner import run_points
    from tosa_bench.sweep.session import plan_new
    from tosa_bench.sweep.suite import Suite

    suite = Suite(models=("test_tiny",), variants=("dense", "tosa"), keeps=(0.5,), batch_size={"cpu": (1,), "cuda": (1,)},
                  devices=("cpu",), timing=True, latency=False, memory=False, warmup=1, repeats=2, time_budget_s=0.05,
                  pair_min_rounds=2, pair_budget_s=0.1)
    plan = plan_new(suite, tmp_path / "run")
    run_points(plan.points, plan.store, suite.settings())
    recs = read_records(plan.store.records_path).records
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    counter, why = open_rapl_counter()
    for r in recs:
        assert set(ENERGY_FIELDS) <= set(r) and r["settings"]["energy"] is True
        if counter is None:  # this VM: no readable RAPL, so empty fields with the reason
            assert r["energy_reason"] == why and all(r[k] is None for k in ENERGY_FIELDS if k != "energy_reason")
        else:
            assert r["energy_reason"] is None and r["energy_j_per_img"] > 0


def test_a_point_that_failed_still_has_the_energy_fields() -> None:
    from tosa_bench.sweep.grid import expand
    from tosa_bench.sweep.runner import measure_one
    from tosa_bench.sweep.suite import Suite

    gp = expand(Suite(models=("test_tiny",), variants=("dense",), devices=("cpu",)))[0]

    def fails(point, settings, stage):
        raise RuntimeError("boom")

    rec = measure_one(gp, Settings(), fails, None, lambda s: None)
    assert rec["status"] == "error" and rec["energy_reason"] == "not measured (the point did not finish)"
    assert all(rec[k] is None for k in ENERGY_FIELDS if k != "energy_reason")


# ----------------------------------------------------------------------------- suite key
def test_the_suite_measure_table_takes_energy(tmp_path) -> None:
    from tosa_bench.sweep.suite import load_suite

    p = tmp_path / "s.toml"
    p.write_text('[grid]\nmodels = ["test_tiny"]\n[measure]\nenergy = false\n')
    assert load_suite(p).settings().energy is False
    p.write_text('[grid]\nmodels = ["test_tiny"]\n[measure]\nenergy = "yes"\n')
    with pytest.raises(SuiteError) as info:
        load_suite(p)
    assert "'measure.energy'" in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- real NVML
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (reads the real NVML energy counter)")
def test_real_nvml_counter_on_cuda() -> None:
    counter, reason = energy.open_counter("cuda:0")
    if counter is None:
        pytest.skip(f"this GPU has no readable energy counter: {reason}")
    x = torch.randn(2048, 2048, device="cuda")
    try:
        result = measure_energy_alone(counter, lambda: x @ x, 1, hint_s=1e-3, sync=torch.cuda.synchronize, windows=2)
    finally:
        counter.close()
    assert all(w.seconds >= 1.0 and w.joules > 0 for w in result.windows)
    assert math.isfinite(result.j_per_img()) and result.j_per_img() > 0
