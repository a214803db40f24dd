"""Runs of one configuration with different seeds, read as one: mean, spread and n.

Papers report several seeds, and so does the demo (``tosa-bench demo --seeds 3``). Each
seed stays its own run directory; :func:`aggregate_runs` matches their records by
configuration (:func:`tosa_bench.results.compare.point_config`: model, variant, options
but the ``seed`` option (the random control's draws follow the run's seed), batch, dtype,
image size, device type, and the *file names* of checkpoint and selector, so
``seed-0/classifier/checkpoint.safetensors`` and ``seed-1/...`` match) and returns one
record per configuration in which each field of :data:`AGGREGATED` is the mean over the
runs that measured it, with beside it:

- ``<field>_sd``: the spread, the sample standard deviation (n - 1 in the denominator;
  0 for a single run);
- ``<field>_min``, ``<field>_max`` and ``<field>_n`` (how many runs measured it).

Tables print ``mean ± sd (n)`` and figures draw ±sd error bars; both say "± = sample
standard deviation over n runs". Per-block object shares (dicts) are averaged block by
block. The paired speed-up becomes the mean of the runs' medians: one run's 95% interval
no longer describes it, so the aggregate keeps the seed spread instead and drops the
interval; ``speedup_paired_noisy`` is True where any run's was. Everything else (model,
variant, options, settings) comes from the first run's record.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from tosa_bench.errors import OptionError
from tosa_bench.results.compare import point_config
from tosa_bench.results.load import RunData

#: the record fields averaged over runs (each gets _sd, _min, _max, _n beside it)
AGGREGATED = ("top1", "top5", "delta1", "delta2", "delta3", "absrel", "sqrel", "rmse", "rmse_log", "log10", "silog",
              "speedup_paired", "throughput_img_s", "latency_ms_p50", "peak_mem_mb", "energy_j_per_img", "energy_ratio", "object_share_mean",
              "object_chance_mean", "gmacs", "gflops", "params")
#: per-block dict fields averaged key by key
AGGREGATED_BY_BLOCK = ("object_share", "object_chance")
#: one run's interval, meaningless for a mean over runs
DROPPED = ("speedup_paired_ci_low", "speedup_paired_ci_high", "energy_ratio_ci_low", "energy_ratio_ci_high", "throughput_img_s_low", "throughput_img_s_high")
SPREAD = "sample standard deviation"
#: the option that is a run's seed, not its configuration (the random control's draws):
#: records that differ only there are seeds of one experiment, aggregated as one; the
#: aggregate's option then lists the seeds it holds
SEED_OPTION = "seed"


def _key(record: Mapping[str, Any]) -> str:
    """The configuration a record belongs to, its seed option left out (:data:`SEED_OPTION`)."""
    import json

    cfg = point_config(record)
    cfg["options"] = {k: v for k, v in cfg["options"].items() if k != SEED_OPTION}
    return json.dumps(cfg, sort_keys=True, default=str)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def spread(values: Sequence[float]) -> dict[str, float]:
    """mean, sd (sample, n - 1; 0 for one value), min, max and n of ``values``."""
    n = len(values)
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if n > 1 else 0.0,
            "min": min(values), "max": max(values), "n": n}


def aggregate_records(runs: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One record per configuration over ``runs`` (lists of records), in the order of
    first appearance (module docstring). Only ``ok`` records are aggregated."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for records in runs:
        for r in records:
            if r.get("status") == "ok":
                groups.setdefault(_key(r), []).append(r)
    out = []
    for members in groups.values():
        agg = {k: v for k, v in members[0].items() if k not in DROPPED}
        agg["aggregated_runs"] = len(members)
        seeds = sorted({m["options"][SEED_OPTION] for m in members if SEED_OPTION in (m.get("options") or {})})
        if len(seeds) > 1:
            for field in ("options", "resolved_options"):
                if isinstance(agg.get(field), dict):
                    agg[field] = {**agg[field], SEED_OPTION: seeds}
        for name in AGGREGATED:
            values = [x for x in (_number(m.get(name)) for m in members) if x is not None]
            if not values:
                continue
            s = spread(values)
            agg[name] = s["mean"]
            for stat in ("sd", "min", "max", "n"):
                agg[f"{name}_{stat}"] = s[stat]
        for name in AGGREGATED_BY_BLOCK:
            dicts = [m.get(name) for m in members if isinstance(m.get(name), dict)]
            if dicts:
                blocks = sorted({b for d in dicts for b in d}, key=lambda b: int(b))
                agg[name] = {b: statistics.fmean([d[b] for d in dicts if b in d]) for b in blocks}
                agg[f"{name}_sd"] = {b: spread([d[b] for d in dicts if b in d])["sd"] for b in blocks}
        noisy = [m.get("speedup_paired_noisy") for m in members if m.get("speedup_paired_noisy") is not None]
        if noisy:
            agg["speedup_paired_noisy"] = any(noisy)
        out.append(agg)
    return out


def aggregate_runs(runs: Sequence[RunData]) -> RunData:
    """The runs as one :class:`RunData` of aggregated records (path: their common
    parent; env: the first run's). OptionError when they share no configuration (not
    seeds of one experiment)."""
    if not runs:
        raise OptionError("aggregate: no runs given")
    keys = [{_key(r) for r in run.records if r.get("status") == "ok"} for run in runs]
    if len(runs) > 1 and not set.intersection(*keys):
        raise OptionError("aggregate: the runs share no configuration (model, variant, options, batch, dtype, "
                          f"checkpoint/selector file names): {', '.join(str(r.path) for r in runs)} are not seeds of one experiment")
    parents = [r.path.resolve() for r in runs]
    common = Path(*Path(parents[0]).parts[:_common_depth(parents)]) if parents else Path(".")
    return RunData(common, aggregate_records([r.records for r in runs]), runs[0].env,
                   any(r.torn_tail for r in runs), [])


def _common_depth(paths: Sequence[Path]) -> int:
    parts = [p.parts for p in paths]
    depth = 0
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        depth += 1
    return max(depth, 1)
