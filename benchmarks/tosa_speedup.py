"""Benchmark: ToSA's measured speed-up over dense against its ideal (GMACs ratio).

Target (foundation issue): on the 2-core CPU, fp32, DeiT-S, batch 32, ToSA at keep 0.5
with the default placement reaches >= 85% of its ideal speed-up, where
ideal = dense GMACs / ToSA GMACs (selectors included) and measured = dense step time /
ToSA step time, timed in alternating rounds. On a GPU run the same at batch 256 in fp16.

Measured through the sweep's own code, so the benchmark and ``tosa-bench sweep`` cannot
disagree on what a speed-up is: the ToSA configuration is a :class:`Point` measured by
``measure_point`` (as one sweep point, ``sweep.runner.measure_one``). Dense and ToSA
(dense twin with the same backbone weights) are timed there in alternating rounds
(``timing.measure_paired``), so drift and other load hit both alike; measured =
``speedup_paired``, the median over rounds of (dense median step / ToSA median step),
ideal = ``speedup_ideal`` (dense / ToSA GMACs, closed-form count with the selectors),
efficiency = ``speedup_efficiency`` = measured / ideal.

    python benchmarks/tosa_speedup.py                        # CPU default
    python benchmarks/tosa_speedup.py --device cuda --batch-size 256 --dtype fp16 --out results/tosa-speedup-gpu

OUT is a run directory that ``tosa-bench report OUT`` reads (replaced on each run):
``records.jsonl`` (a dense record with counts only, its time is the twin's inside the
ToSA record, and the timed ToSA record, with ``speedup_paired_rounds``), ``env.json``,
and ``summary.json`` (the JSON printed at the end).
Exit code 1 when the efficiency is below --target, 2 when the point failed (its record
says why, status ``error`` or ``oom``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from tosa_bench.errors import run_script
from tosa_bench.measure.env import environment_record
from tosa_bench.measure.point import measure_point
from tosa_bench.measure.spec import Point, Settings, resolve_device
from tosa_bench.methods.registry import DENSE
from tosa_bench.methods.tosa import ToSAReducer
from tosa_bench.precision import resolve_autocast
from tosa_bench.results.store import ENV, RECORDS, RunStore
from tosa_bench.sweep.session import check_out_dir
from tosa_bench.sweep.accuracy import ACCURACY_FIELDS
from tosa_bench.sweep.grid import GridPoint
from tosa_bench.sweep.runner import measure_one

SUMMARY = "summary.json"


def _no_accuracy(point: Point, stage) -> dict[str, Any]:
    return {**{k: None for k in ACCURACY_FIELDS}, "accuracy_reason": "not measured (benchmarks/tosa_speedup.py)"}


def measure_pair(store: RunStore, model: str, keep: float, placement: str, importance: str, batch_size: int, dtype: str, device: str,
                 rounds: int, steps: int, warmup: int, session: str,
                 extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Measure dense (counts only) and ToSA (timed against its dense twin in exactly
    ``rounds`` ABBA rounds of ``steps`` steps) and append both records to ``store`` as
    each finishes; ``extra(record)`` adds fields to a measured ToSA record before it is
    written. Returns [dense record, ToSA record]."""
    options = {"keep": keep, "placement": placement, "importance": importance}
    dense = GridPoint(Point(model=model, variant=DENSE, batch_size=batch_size, dtype=dtype, device=device))
    tosa = GridPoint(Point(model=model, variant=ToSAReducer.variant, options=options, batch_size=batch_size, dtype=dtype, device=device),
                     keeps=(keep,), placement=placement)
    # exactly `rounds` rounds: no budget, no early stop (pair_target 0)
    timed = Settings(timing=True, latency=False, memory=False, warmup=warmup, repeats=rounds * steps, time_budget_s=None, paired=True,
                     pair_steps=steps, pair_min_rounds=rounds, pair_max_rounds=rounds, pair_target=0.0)
    counted = Settings(timing=False, latency=False, memory=False)
    records = []
    for gp, settings in ((dense, counted), (tosa, timed)):
        torch.manual_seed(0)  # the same random weights run after run
        rec = measure_one(gp, settings, measure_point, _no_accuracy, lambda _stage: None, run_id=store.path.name, session=session)
        if gp is dense and rec["status"] == "ok":
            rec["timing_reason"] = "timed as the dense twin inside the ToSA record (dense_throughput_img_s_paired)"
        if gp is tosa and rec["status"] == "ok" and extra is not None:
            rec.update(extra(rec))
        store.append(rec)
        records.append(rec)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--placement", default="alternate")
    p.add_argument("--importance", default="mean", choices=["mean", "cls"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5, help="alternating dense/ToSA rounds (>= 2)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--target", type=float, default=0.85, help="required share of the ideal speed-up")
    p.add_argument("--out", type=Path, default=Path("runs/tosa-speedup-cpu"))
    a = p.parse_args(argv)
    if a.rounds < 2 or a.steps < 1 or a.warmup < 0:
        p.error("need --rounds >= 2, --steps >= 1 and --warmup >= 0")

    device = resolve_device(a.device)
    resolve_autocast(a.dtype, torch.device(device))  # validate before any work
    check_out_dir(a.out, overwrite=True)  # never the root, home, a file or a folder that is not a run
    if (a.out / RECORDS).exists():
        (a.out / RECORDS).unlink()  # one benchmark, one result: a rerun replaces the last
    store = RunStore.create(a.out)
    store.write_json(ENV, environment_record(device=device))
    store.open_for_append()
    session = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    records = measure_pair(store, a.model, a.keep, a.placement, a.importance, a.batch_size, a.dtype, device, a.rounds, a.steps, a.warmup, session)
    rec = records[-1]

    for r, ratio in enumerate(rec.get("speedup_paired_rounds") or []):
        print(f"round {r + 1}/{a.rounds}: dense/tosa step-time ratio {ratio:.3f}", file=sys.stderr)
    failed = next((r for r in records if r["status"] != "ok"), None)
    common = {"model": a.model, "batch_size": a.batch_size, "dtype": a.dtype, "device": device, "threads": torch.get_num_threads()}
    ratios = rec.get("speedup_paired_rounds") or [None]
    summary = {**common, "variant": "summary", "keep": a.keep, "placement": a.placement, "importance": a.importance,
               "speedup_measured": rec.get("speedup_paired"), "speedup_ideal": rec.get("speedup_ideal"),
               "efficiency": rec.get("speedup_efficiency"), "target": a.target,
               "round_ratio_min": rec.get("speedup_paired_min", ratios[0]), "round_ratio_max": rec.get("speedup_paired_max", ratios[-1]),
               "speedup_ci95_low": rec.get("speedup_paired_ci_low"), "speedup_ci95_high": rec.get("speedup_paired_ci_high"),
               "noisy": rec.get("speedup_paired_noisy"),
               "rounds": rec.get("pair_rounds"), "steps_per_round": a.steps,
               "status": failed["status"] if failed else "ok", "error": failed["error"] if failed else None,
               "config_hash": rec["config_hash"], "out": str(store.path),
               "method": "speedup_paired of measure_point: median over alternating (ABBA) rounds of (dense median step / ToSA median step), "
                         "with the distribution-free 95% interval of that median; "
                         "ideal = speedup_ideal (dense / ToSA GMACs, closed-form count incl. selectors, per image)"}
    store.write_json(SUMMARY, summary)
    print(json.dumps(summary, indent=2))
    if failed:
        print(f"error: {failed['model']}/{failed['variant']}: {failed['error']}", file=sys.stderr)
        return 2
    return 0 if summary["efficiency"] >= a.target else 1


if __name__ == "__main__":
    sys.exit(run_script(main))
