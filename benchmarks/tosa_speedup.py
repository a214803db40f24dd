"""Benchmark: ToSA's measured speed-up over dense against its ideal (GMACs ratio).

Target (foundation issue): on the 2-core CPU, fp32, DeiT-S, batch 32, ToSA at keep 0.5
with the default placement reaches >= 85% of its ideal speed-up, where
ideal = dense GMACs / ToSA GMACs (selectors included) and measured = dense median step
time / ToSA median step time. On a GPU run the same at batch 256 in fp16.

Dense and ToSA are timed in alternating rounds in one process (measure_paired, as the
sweep does), so drift and other load hit both alike; the median of the per-round ratios
is reported with their range.

    python benchmarks/tosa_speedup.py                        # CPU default
    python benchmarks/tosa_speedup.py --device cuda --batch-size 256 --dtype fp16 --out results/tosa-speedup-gpu

Writes OUT/records.jsonl (one record per variant + one summary) and OUT/env.json.
Exit code 1 when the efficiency is below --target.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tosa_bench import build_model
from tosa_bench.measure.env import environment_record
from tosa_bench.measure.flops import count_macs
from tosa_bench.measure.point import resolve_device
from tosa_bench.measure.timing import default_timer, measure_paired
from tosa_bench.precision import autocast


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--placement", default="alternate")
    p.add_argument("--importance", default="mean", choices=["mean", "cls"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5, help="alternating dense/ToSA rounds")
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--target", type=float, default=0.85, help="required share of the ideal speed-up")
    p.add_argument("--out", type=Path, default=Path("results/tosa-speedup-cpu"))
    a = p.parse_args(argv)

    device = resolve_device(a.device)
    autocast(a.dtype, device)  # validate before any work
    torch.manual_seed(0)
    dense = build_model(a.model)
    tosa = build_model(a.model, "tosa", keep=a.keep, placement=a.placement, importance=a.importance)
    tosa.load_state_dict(dense.state_dict(), strict=False)
    size = dense.cfg.img_size
    gmacs = {name: count_macs(m, torch.randn(1, 3, size, size)).gmacs for name, m in (("dense", dense), ("tosa", tosa))}
    models = {"dense": dense.to(device), "tosa": tosa.to(device)}
    images = torch.randn(a.batch_size, 3, size, size, device=device)
    timer = default_timer(torch.device(device))

    def step_of(model):
        def step() -> None:
            with torch.inference_mode(), autocast(a.dtype, device):
                model(images)

        return step

    pair = measure_paired(step_of(models["dense"]), step_of(models["tosa"]), timer, warmup=a.warmup, steps_per_round=a.steps, max_rounds=a.rounds, min_rounds=a.rounds)
    for r, ratio in enumerate(pair.round_ratios):
        print(f"round {r + 1}/{a.rounds}: dense/tosa step-time ratio {ratio:.3f}", file=sys.stderr)
    stats = {"dense": pair.a, "tosa": pair.b}
    measured = pair.speedup
    ideal = gmacs["dense"] / gmacs["tosa"]
    common = {"model": a.model, "batch_size": a.batch_size, "dtype": a.dtype, "device": device, "threads": torch.get_num_threads()}
    records = [
        {**common, "variant": name, "options": {"keep": a.keep, "placement": a.placement, "importance": a.importance} if name == "tosa" else {}, "gmacs": gmacs[name],
         "step_s_median": stats[name].median_s, "step_s_min": stats[name].min_s, "step_s_max": stats[name].max_s,
         "timed_steps": stats[name].repeats, "throughput_img_s": a.batch_size / stats[name].median_s}
        for name in ("dense", "tosa")
    ]
    summary = {**common, "variant": "summary", "keep": a.keep, "placement": a.placement, "importance": a.importance, "speedup_measured": measured, "speedup_ideal": ideal,
               "efficiency": measured / ideal, "target": a.target, "round_ratio_min": min(pair.round_ratios), "round_ratio_max": max(pair.round_ratios),
               "rounds": len(pair.round_ratios), "steps_per_round": a.steps,
               "method": "median over alternating rounds of (dense median step / ToSA median step); ideal = GMACs ratio (fvcore + handles, per image)"}
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "records.jsonl", "w") as f:
        for rec in records + [summary]:
            f.write(json.dumps(rec) + "\n")
    (a.out / "env.json").write_text(json.dumps(environment_record(device=device), indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["efficiency"] >= a.target else 1


if __name__ == "__main__":
    sys.exit(main())
