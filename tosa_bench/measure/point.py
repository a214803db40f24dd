"""Measure one configuration ("point"): the one place where a model is built, counted,
timed and its memory read. ``tosa-bench profile`` prints one point; ``tosa-bench sweep``
measures many and stores each as a record.

Record units and conventions (every record says them in ``conventions``):

- ``gmacs``: giga multiply-accumulates per image (fvcore + our handles, see flops.py);
  ``gflops`` = 2 x gmacs. ``gmacs_analytic`` is the closed-form count (analytic.py).
- ``params``: all parameters; ``params_method``: the method's own (ToSA selectors).
- ``throughput_img_s``: images/s from the median step time of repeated timed batches
  (after warm-up, device synchronised); ``_low``/``_high`` at the slowest/fastest step.
  A variant is timed in alternating rounds with its dense twin (same weights, batch,
  dtype, device): per round, ratio = dense median step / variant median step
  (``speedup_paired_rounds``, in round order); ``speedup_paired`` = the median of those
  ratios, ``speedup_paired_min``/``_max`` their range, ``speedup_paired_ci_low``/``_high``
  the distribution-free 95% interval of that median (``_ci_coverage`` its exact
  coverage) and ``speedup_paired_noisy`` True when that interval is wider than
  +-``Settings.noise_threshold`` (tables then mark the speed-up as noisy). Rounds run in
  ABBA order after interleaved warm-up (:func:`tosa_bench.measure.timing.measure_paired`).
  Ratios between separately timed points on a shared machine drift by tens of percent,
  paired ones do not. With ``Settings.pair_dense`` dense is paired with a second dense
  instance (the A/A check: it must read 1.00). A speed-up the regression gate measured
  again (:func:`remeasure_speedup`) pools the rounds of every measurement:
  ``speedup_paired_rounds`` holds them all and ``pair_measurements`` says how many
  measurements they came from (absent: one).
  ``speedup_ideal`` = dense GMACs / the point's GMACs (formula), ``speedup_efficiency``
  = ``speedup_paired`` / ``speedup_ideal``. ``benchmarks/tosa_speedup.py`` reports the
  same fields from the same code.
- ``latency_ms_p50``/``_p90``: batch-1 forward, milliseconds.
- ``peak_mem_mb``: MiB. On CUDA: ``torch.cuda.max_memory_allocated`` around one forward
  (tensors only: weights, inputs, activations). On CPU: the rise of the resident
  high-water mark over one forward (``/proc/self/clear_refs`` reset, VmHWM), i.e. the
  forward's own activations and workspace, read in a fresh child process
  (:mod:`tosa_bench.measure.cpu_peak` says why). ``peak_mem_method`` names which.
  NVML's per-process figure (CUDA context + allocator cache) is ``nvml_process_mib``,
  never mixed into ``peak_mem_mb``.
- ``energy_*``: joules per image from NVML (GPU) or RAPL (CPU) over >= 1 s windows of the
  steps the paired timing ran, after it; a variant's windows alternate (ABBA) with its
  dense twin's, giving ``energy_ratio`` with a 95% interval. No counter: every field None
  and ``energy_reason`` says why (:mod:`tosa_bench.measure.energy`).
- ``cpu_chunks``: the chunk budget (bytes per chunk, 0 = one piece) of each chunked CPU op
  the model ran, calibrated on this machine, and where it came from
  (:mod:`tosa_bench.models.chunks`); {} off the CPU.
- ``kernel_paths``: how the model's modules ran in the check's forward, where they can
  run more than one way (ToSA's selectors: "triton kernel (packed)" or "(stacked)" on CUDA, "fused CPU kernel",
  "PyTorch ops ..." with the reason on CUDA; ToMe's biased attention: the backend timed
  fastest, "biased attention: sdpa (...)"); [] for dense, EViT and the random control.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

import torch

from tosa_bench.build import build_model
from tosa_bench.measure.analytic import analytic_macs
from tosa_bench.measure.cpu_peak import measure_cpu_peak
from tosa_bench.measure.energy import ENERGY_CONVENTION
from tosa_bench.measure.flops import count_macs
from tosa_bench.measure.compiled import COMPILE_CONVENTION
from tosa_bench.measure.spec import MAC_CONVENTION, NonFiniteOutput, Point, Settings, build_point_model, resolve_device
from tosa_bench.methods import registry
from tosa_bench.methods.base import TokenReducer, kernel_paths
from tosa_bench.methods.registry import expected_token_counts
from tosa_bench.models.chunks import used_by
from tosa_bench.precision import autocast


def count_point(model) -> dict[str, Any]:
    """Parameters, MACs (counter and formula) and tokens per block, per image."""
    cfg = model.cfg
    size = cfg.img_size
    counted = count_macs(model, torch.randn(1, 3, size, size))
    counts = model.token_counts
    formula = analytic_macs(cfg, model.reducer, counts)
    dense = TokenReducer()
    dense.bind(cfg)
    dense_formula = analytic_macs(cfg, dense, expected_token_counts(dense, cfg.num_tokens))
    selectors = [counted.by_module.get(f"reducer.selectors.{i}", 0) for i in range(cfg.depth)]
    per_block = [counted.by_module.get(f"blocks.{i}", 0) + selectors[i] for i in range(cfg.depth)]
    params = sum(p.numel() for p in model.parameters())
    params_method = sum(p.numel() for p in model.reducer.parameters())
    return {
        "params": params,
        "params_method": params_method,
        "params_backbone": params - params_method,
        "gmacs": counted.gmacs,
        "gflops": counted.gflops,
        "gmacs_analytic": formula.gmacs,
        "gmacs_dense_analytic": dense_formula.gmacs,
        "speedup_ideal": dense_formula.total / formula.total,  # dense GMACs / these GMACs
        "gmacs_per_block": [m / 1e9 for m in per_block],
        # work the method does outside any module (ToMe matching, softmax of predictions)
        "gmacs_method_outside_blocks": (counted.by_module.get("reducer", 0) - sum(selectors)) / 1e9,
        "gmacs_selectors": sum(selectors) / 1e9,  # ToSA's selector convolutions (their softmax: the line above)
        "tokens_per_block": [[t.attn, t.mlp] for t in counts],
        "selector_tokens_per_block": [t.selector for t in counts],
        "uncounted_ops": counted.uncounted_ops,
        "img_size": size,
    }


def _images(count: int, size: int, device: torch.device | str) -> torch.Tensor:
    """``count`` random images (count, 3, size, size), drawn on the CPU from a generator
    seeded 0 and then moved: the same pixels on every call and every device."""
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


def _check_finite(model, point: Point, device: str) -> None:
    """Raise ``NonFiniteOutput`` if the model's output on (up to) two images is NaN/Inf
    under the point's dtype."""
    x = _images(min(point.batch_size, 2), model.cfg.img_size, device)
    with torch.inference_mode(), autocast(point.dtype, device):
        y = model(x)
    if not torch.isfinite(y).all():
        raise NonFiniteOutput(f"non-finite output (NaN/Inf) from {point.model}/{point.variant} in {point.dtype}")


def _memory(model, point: Point, device: str) -> dict[str, Any]:
    """The record's memory fields (MiB): on CUDA the allocator's peak around one forward of
    the point's batch, and NVML's figure for this process on that card; on the CPU the rise
    of the resident high-water mark over one forward, read in a child process."""
    from tosa_bench.measure.memory import gpu_peak_tensor_memory, nvml_index_for_cuda_device, nvml_process_memory

    dev = torch.device(device)
    if dev.type == "cuda":
        x = _images(point.batch_size, model.cfg.img_size, dev)

        def forward() -> None:
            with torch.inference_mode(), autocast(point.dtype, dev):
                model(x)

        gpu = gpu_peak_tensor_memory(forward, device=dev)
        nvml = nvml_process_memory(nvml_index_for_cuda_device(dev.index or 0))
        return {
            "peak_mem_mb": gpu.value_mib,
            "peak_mem_method": gpu.method + " (MiB, tensors only, incl. weights and inputs)",
            "gpu_peak_alloc_mib": gpu.value_mib,
            "nvml_process_mib": nvml.value_mib,
            "nvml_reason": nvml.reason,
            "cpu_peak_rss_mib": None,
            "cpu_peak_reason": "measured on the GPU",
        }
    # in a child process: pinning glibc's thresholds here would slow this process's timing
    cpu = measure_cpu_peak(point, threads=torch.get_num_threads())
    before = cpu.detail.get("rss_before_mib")
    rise = cpu.value_mib - before if cpu.available and before is not None else None
    return {
        "peak_mem_mb": rise,
        "peak_mem_method": cpu.method + " minus RSS before the forward (MiB)" if rise is not None else cpu.reason,
        "gpu_peak_alloc_mib": None,
        "nvml_process_mib": None,
        "nvml_reason": "no CUDA device",
        "cpu_peak_rss_mib": cpu.value_mib,
        "cpu_peak_reason": cpu.reason,
    }


def _pairs_with_dense(point: Point, settings: Settings) -> bool:
    """Whether the point is timed (and its energy measured) against a dense twin."""
    return settings.paired and (not registry.is_dense(point.variant) or settings.pair_dense)


def _throughput(model, point: Point, settings: Settings, device: str, steps=None) -> dict[str, Any]:
    """Throughput fields. A variant is timed in alternating rounds with the dense model of
    the same name, weights, batch, dtype and device (``settings.paired``), so its
    ``speedup_paired`` is a ratio measured under the same conditions; dense, or
    ``paired=False``, is timed alone. Without a checkpoint the dense twin takes the
    variant's backbone weights, so the two differ only in the method. A compiled point
    compiles both the same way, before anything is timed (:mod:`.compiled`). ``steps``:
    what :func:`_paired_steps` returned, to time (None: made here)."""
    from tosa_bench.measure.compiled import compile_fields
    from tosa_bench.measure.timing import measure_throughput

    if not _pairs_with_dense(point, settings):
        tp = measure_throughput(model, point.batch_size, model.cfg.img_size, device, point.dtype, settings.warmup, settings.repeats, settings.time_budget_s, point.compile)
        out = _throughput_fields(tp["images_per_s"], tp["images_per_s_low"], tp["images_per_s_high"], tp["step_time_s_median"], tp["step_time_s_p10"], tp["step_time_s_p90"], tp["repeats"], tp["warmup_steps"], tp["timer"])
        return {**out, **compile_fields(tp.get("compile_info"))}
    pair, compiled = _paired(model, point, settings, device, steps)
    b, a = pair.b, pair.a
    out = _throughput_fields(point.batch_size / b.median_s, point.batch_size / b.max_s, point.batch_size / b.min_s, b.median_s, b.p10_s, b.p90_s, b.repeats, b.warmup_steps, b.timer)
    out.update(dense_throughput_img_s_paired=point.batch_size / a.median_s, **_speedup_fields(pair, settings), **compile_fields(*compiled))
    return out


def _paired_steps(model, point: Point, device: str):
    """(dense twin's step, ``model``'s step, (variant, dense) CompileInfo): one batch
    forward each, on the same seeded images, in inference mode under the point's dtype.
    A compiled point's two models are compiled and warmed here, together, before anything
    is timed (:mod:`.compiled`; the infos are None for an eager point). Timed by
    :func:`_paired`; the energy windows (:func:`_energy`) run the same two callables."""
    from tosa_bench.measure.compiled import compile_and_warm_together, fresh_compile
    from tosa_bench.measure.timing import device_sync

    dense = build_model(point.model, registry.DENSE, checkpoint=point.checkpoint, img_size=point.img_size)
    if point.checkpoint is None:
        dense.load_state_dict(model.state_dict(), strict=False)  # the method's own modules are not dense's
    dense = dense.to(device).eval()
    call = _caller(point, device, model.cfg.img_size)
    run_dense, run_variant, infos = dense, model.eval(), (None, None)
    if point.compile:
        fresh_compile()
        (run_dense, run_variant), (dense_info, variant_info) = compile_and_warm_together(
            [dense, run_variant], point.compile, call, device_sync(torch.device(device)))
        infos = (variant_info, dense_info)
    return (lambda: call(run_dense)), (lambda: call(run_variant)), infos


def _caller(point: Point, device: str, img_size: int) -> Callable[[Callable[..., Any]], None]:
    """``call(run)``: one batch forward of ``run`` on the point's seeded images (made once),
    in inference mode under the point's dtype, on its device."""
    dev = torch.device(device)
    images = _images(point.batch_size, img_size, dev)

    def call(run: Callable[..., Any]) -> None:
        with torch.inference_mode(), autocast(point.dtype, dev):
            run(images)

    return call


def _paired(model, point: Point, settings: Settings, device: str, steps=None):
    """``model`` timed against its dense twin (:func:`_throughput`): the PairedStats and
    the (variant, dense) CompileInfo. ``steps``: what :func:`_paired_steps` returned
    (None: made here). A compiled pair is timed where a recompile fails the point."""
    from tosa_bench.measure.compiled import maybe_no_recompiles
    from tosa_bench.measure.timing import default_timer, measure_paired

    dense_step, step, infos = steps or _paired_steps(model, point, device)
    with maybe_no_recompiles(bool(point.compile), "paired throughput"):
        pair = measure_paired(dense_step, step, default_timer(torch.device(device)), warmup=settings.warmup,
                              steps_per_round=settings.pair_steps, min_rounds=settings.pair_min_rounds, max_rounds=settings.pair_rounds_max,
                              time_budget_s=settings.pair_budget, target_halfwidth=settings.pair_target)
    return pair, infos


def _energy(model, point: Point, settings: Settings, device: str, steps, timed: Mapping[str, Any]) -> dict[str, Any]:
    """The record's energy fields (:mod:`tosa_bench.measure.energy`), measured after the
    throughput phase with the steps it timed: ``steps`` (dense twin, variant) in ABBA
    windows when the point was paired, else the point's own step alone. Step-time hints
    come from ``timed`` (the throughput fields). No counter, or one that failed: the
    fields are None with the reason."""
    from tosa_bench.measure import energy
    from tosa_bench.measure.compiled import compile_and_warm, maybe_no_recompiles
    from tosa_bench.measure.timing import device_sync

    if not settings.energy:
        return energy.unmeasured("not measured (energy = false)")
    if not settings.timing:
        return energy.unmeasured("not measured (energy needs the timing phase: timing = false / --no-timing)")
    counter, reason = energy.open_counter(device)
    if counter is None:
        return energy.unmeasured(reason)
    sync = device_sync(torch.device(device))
    hint = timed["step_ms_median"] / 1e3
    try:
        if steps is not None:
            dense_hint = point.batch_size / timed["dense_throughput_img_s_paired"]
            with maybe_no_recompiles(bool(point.compile), "energy"):
                result = energy.measure_energy_paired(counter, steps[0], steps[1], point.batch_size, dense_hint, hint, sync)
        else:
            call, run = _caller(point, device, model.cfg.img_size), model
            if point.compile:  # the throughput phase compiled it already: from the cache, outside the windows
                run, _ = compile_and_warm(model, point.compile, call, sync)
            with maybe_no_recompiles(bool(point.compile), "energy"):
                result = energy.measure_energy_alone(counter, lambda: call(run), point.batch_size, hint, sync)
    except (energy.CounterWentBack, ValueError, OSError) as exc:
        return energy.unmeasured(f"unavailable: {exc}", counter.method)
    finally:
        counter.close()
    return energy.energy_fields(result)


def _speedup_fields(pair, settings: Settings) -> dict[str, Any]:
    """The speed-up fields of a record from a PairedStats (its round ratios alone)."""
    low, high, coverage = pair.interval
    return dict(
        speedup_paired=pair.speedup,
        speedup_paired_ci_low=low,
        speedup_paired_ci_high=high,
        speedup_paired_ci_coverage=coverage,
        speedup_paired_noisy=pair.noisy(settings.noise_threshold),
        speedup_paired_min=min(pair.round_ratios),
        speedup_paired_max=max(pair.round_ratios),
        speedup_paired_rounds=list(pair.round_ratios),
        pair_rounds=len(pair.round_ratios),
        pair_steps=settings.pair_steps,
    )


def remeasure_speedup(point: Point, settings: Settings, previous: Mapping[str, Any]) -> dict[str, Any]:
    """``previous`` (an ok record of ``point`` with a paired speed-up) with its speed-up
    measured again and pooled: the new rounds are added to ``speedup_paired_rounds`` and
    every speed-up field (median, 95% interval, noisy flag, range, efficiency) is
    recomputed from all of them, so each re-measurement narrows the interval of a point
    that load made noisy. ``pair_measurements`` counts the paired measurements pooled (a
    record without it holds one). Only the speed-up is measured again; the other fields
    stay ``previous``'s. The regression gate uses it (:mod:`tosa_bench.results.check`)."""
    from tosa_bench.measure.timing import PairedStats

    rounds = previous.get("speedup_paired_rounds")
    if not rounds:
        raise ValueError(f"{point.model}/{point.variant}: the record has no paired rounds to add to")
    device = resolve_device(point.device)
    model = build_point_model(point).to(device)
    _check_finite(model, point, device)  # settles the chunk budgets before anything is timed, as measure_point does
    pair, _ = _paired(model, point, settings, device)
    pooled = PairedStats(pair.a, pair.b, tuple(rounds) + pair.round_ratios, pair.level)
    record = {**previous, **_speedup_fields(pooled, settings), "pair_measurements": int(previous.get("pair_measurements") or 1) + 1}
    record["speedup_efficiency"] = _efficiency(record)
    return record


def _efficiency(record: dict[str, Any]) -> float | None:
    """Share of the ideal (GMACs-ratio) speed-up that the paired timing achieved."""
    if record.get("speedup_paired") is None or not record.get("speedup_ideal"):
        return None
    return record["speedup_paired"] / record["speedup_ideal"]


def _throughput_fields(tp: float, low: float, high: float, median_s: float, p10_s: float, p90_s: float, steps: int, warmup: int, timer: str) -> dict[str, Any]:
    return {
        "throughput_img_s": tp,
        "throughput_img_s_low": low,
        "throughput_img_s_high": high,
        "step_ms_median": median_s * 1e3,
        "step_ms_p10": p10_s * 1e3,
        "step_ms_p90": p90_s * 1e3,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "timer": timer,
    }


def measure_point(point: Point, settings: Settings = Settings(), stage: Callable[[str], None] | None = None, model=None) -> dict[str, Any]:
    """Measure ``point``; returns the record fields (no status; the caller adds it).

    ``model``: the point's model if the caller built it already (``build_point_model``).

    ``stage`` is called with a short label before each phase (for progress display).
    Raises ``NonFiniteOutput`` for NaN/Inf outputs and lets CUDA out-of-memory
    propagate, so a sweep can record them per point.
    """
    stage = stage or (lambda _label: None)
    device = resolve_device(point.device)
    stage("build")
    model = build_point_model(point) if model is None else model
    keep = point.options.get("keep")
    record: dict[str, Any] = {
        "model": point.model,
        "variant": point.variant,
        "keep": keep,
        "options": point.config()["options"],
        "resolved_options": json.loads(json.dumps(model.reducer.options())),
        "batch_size": point.batch_size,
        "dtype": point.dtype,
        "device": device,
        "checkpoint": point.checkpoint,
        "selector": point.selector,
        "compile": point.compile or False,
        "conventions": {"compile": COMPILE_CONVENTION, "gmacs": MAC_CONVENTION, "throughput": "images/s, median step", "latency": "ms, batch 1", "memory": "MiB",
                        "energy": ENERGY_CONVENTION},
    }
    stage("count")
    record.update(count_point(model))
    model = model.to(device)
    stage("check")
    _check_finite(model, point, device)
    record["threads"] = torch.get_num_threads()
    record["cpu_chunks"] = used_by(model)  # settled by the check's forward, before any timing
    record["kernel_paths"] = kernel_paths(model, compiled=bool(point.compile))
    if settings.timing:
        from tosa_bench.measure.timing import measure_latency

        stage("throughput")
        steps = _paired_steps(model, point, device) if _pairs_with_dense(point, settings) else None
        record.update(_throughput(model, point, settings, device, steps))
        record["speedup_efficiency"] = _efficiency(record)
        if settings.energy:
            stage("energy")  # after the timed rounds, never inside them
            record.update(_energy(model, point, settings, device, steps, record))
        if settings.latency:
            stage("latency")
            half = settings.time_budget_s / 2 if settings.time_budget_s is not None else None
            lat = measure_latency(model, model.cfg.img_size, device, point.dtype, settings.warmup, settings.repeats, half, point.compile)
            record.update(latency_ms_p50=lat["latency_ms_p50"], latency_ms_p90=lat["latency_ms_p90"])
    if settings.memory:
        stage("memory")
        record.update(_memory(model, point, device))
    for key in ("throughput_img_s", "latency_ms_p50", "peak_mem_mb"):
        record.setdefault(key, None)
    if "energy_reason" not in record:
        record.update(_energy(model, point, settings, device, None, record))  # only says why not measured
    if not settings.timing:
        record["timing_reason"] = "not measured (--no-timing)"
    if any(isinstance(v, float) and math.isnan(v) for v in (record.get("gmacs"), record.get("throughput_img_s"))):
        raise NonFiniteOutput("a measurement came out NaN")
    return record
