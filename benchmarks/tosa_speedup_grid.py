"""Benchmark: ToSA's share of its ideal speed-up per batch size, importance rule and dtype.

Every combination is one pair of points measured exactly as ``benchmarks/tosa_speedup.py``
measures one (``measure_pair``: ToSA against its dense twin in ABBA rounds, the sweep's own
``measure_point``), plus the selectors' share of a ToSA forward's time, read with hooks in
nine more forwards (``measure.block_time``; the median share with the distribution-free
95% interval over those forwards), next to their share of its MACs (selector
convolutions + softmax of the predictions, from the counter). A selector that costs no
more than its MACs has a time share close to its MAC share.

    python benchmarks/tosa_speedup_grid.py                       # CPU: batch 1,8,16,32,64 x mean,cls, fp32
    python benchmarks/tosa_speedup_grid.py --dtypes bf16 --batch-sizes 1,8,16 --out SAME_OUT   # add rows
    python benchmarks/tosa_speedup_grid.py --device cuda --dtypes fp16,bf16 --batch-sizes 64,128,256 \\
        --out results/tosa-speedup-gpu-grid                      # the GPU settings, unchanged

OUT is a run directory (``tosa-bench report OUT`` reads it): ``records.jsonl`` (a dense and
a ToSA record per combination, each written as it finishes), ``env.json``, ``summary.json``
(one row per combination) and ``summary.md`` (the table, with its conditions). A rerun with
the same OUT keeps the combinations already measured there and measures the rest (an
interrupted grid resumes); ``--overwrite`` starts again. Exit code 2 when a point failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tosa_speedup import measure_pair  # noqa: E402  (a sibling script, not a package)

from tosa_bench.measure.block_time import block_time_shares  # noqa: E402
from tosa_bench.errors import run_script  # noqa: E402
from tosa_bench.measure.env import environment_record  # noqa: E402
from tosa_bench.measure.spec import Point, build_point_model, resolve_device  # noqa: E402
from tosa_bench.measure.timing import median_interval  # noqa: E402
from tosa_bench.methods.registry import DENSE  # noqa: E402
from tosa_bench.methods.tosa import ToSAReducer  # noqa: E402
from tosa_bench.models.chunks import FUSED, describe_budget  # noqa: E402
from tosa_bench.precision import resolve_autocast  # noqa: E402
from tosa_bench.results.store import ENV, RECORDS, RunStore, read_records  # noqa: E402
from tosa_bench.sweep.session import check_out_dir  # noqa: E402

SUMMARY, TABLE = "summary.json", "summary.md"
#: hooked forwards per combination for the selectors' time share (9: the median's 95%
#: interval is then the 2nd and 8th of them, coverage 96%)
SHARE_PASSES = 9


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def selector_shares(rec: dict[str, Any], batch_size: int, device: str, passes: int = SHARE_PASSES) -> dict[str, Any]:
    """The selectors' share of a ToSA forward's time (hooks; the median over ``passes``
    forwards after one untimed, with the distribution-free 95% interval of that median)
    and of its MACs, for the point of ``rec``; the model is rebuilt with the same seed."""
    torch.manual_seed(0)
    point = Point(model=rec["model"], variant=ToSAReducer.variant, options=rec["options"], batch_size=batch_size, dtype=rec["dtype"], device=device)
    model = build_point_model(point).to(device).eval()
    x = torch.randn(batch_size, 3, model.cfg.img_size, model.cfg.img_size, generator=torch.Generator().manual_seed(0)).to(device)
    per_pass = block_time_shares(model, x, passes=passes, dtype=rec["dtype"])["selectors_per_pass"]
    share, (low, high, _) = statistics.median(per_pass), median_interval(per_pass)
    macs = (rec["gmacs_selectors"] + rec["gmacs_method_outside_blocks"]) / rec["gmacs"]
    return {"time_share_selectors": share, "time_share_selectors_ci_low": low, "time_share_selectors_ci_high": high,
            "time_share_selectors_passes": passes, "time_share_selectors_per_pass": per_pass, "mac_share_selectors": macs,
            "selector_time_over_mac_share": share / macs if macs else None}


def _selector_path(rec: dict[str, Any]) -> str:
    """How the selectors ran: the chunk size of a chunked PyTorch path, else the record's
    kernel paths (which name the kernel's vector width)."""
    plans = [v for k, v in (rec.get("cpu_chunks") or {}).items() if k.startswith("selector ")]
    if plans and plans[0]["bytes"] != FUSED:
        return describe_budget(plans[0]["bytes"])
    return ", ".join(rec.get("kernel_paths") or []) or (describe_budget(plans[0]["bytes"]) if plans else "n/a")


def _ratio_interval(tosa: dict[str, Any]) -> dict[str, Any]:
    """The selectors' time/MAC ratio's 95% interval and the hooked forwards it came from,
    for a record that has them (runs before the interval existed: nothing)."""
    macs = tosa.get("mac_share_selectors")
    if not (tosa.get("time_share_selectors_passes") and macs):
        return {}
    return {"selector_time_over_mac_share_ci95": [tosa["time_share_selectors_ci_low"] / macs, tosa["time_share_selectors_ci_high"] / macs],
            "selector_share_passes": tosa["time_share_selectors_passes"]}


def summary_row(dense: dict[str, Any], tosa: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": tosa["model"], "batch_size": tosa["batch_size"], "dtype": tosa["dtype"], "device": tosa["device"],
        "importance": tosa["options"]["importance"], "keep": tosa["options"]["keep"], "placement": tosa["options"]["placement"],
        "status": tosa["status"], "error": tosa.get("error"),
        "speedup_measured": tosa.get("speedup_paired"), "speedup_ci95_low": tosa.get("speedup_paired_ci_low"),
        "speedup_ci95_high": tosa.get("speedup_paired_ci_high"), "noisy": tosa.get("speedup_paired_noisy"),
        "rounds": tosa.get("pair_rounds"), "speedup_ideal": tosa.get("speedup_ideal"), "efficiency": tosa.get("speedup_efficiency"),
        "dense_step_ms": (tosa["batch_size"] / tosa["dense_throughput_img_s_paired"] * 1e3) if tosa.get("dense_throughput_img_s_paired") else None,
        "tosa_step_ms": tosa.get("step_ms_median"),
        "time_share_selectors": tosa.get("time_share_selectors"), "mac_share_selectors": tosa.get("mac_share_selectors"),
        "selector_time_over_mac_share": tosa.get("selector_time_over_mac_share"),
        **_ratio_interval(tosa),
        "selector_path": _selector_path(tosa), "threads": tosa.get("threads"), "config_hash": tosa["config_hash"],
    }


def _f(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _share_method(row: dict[str, Any]) -> str:
    """How a table's selector time shares were read (older runs: two forwards, no interval)."""
    passes = row.get("selector_share_passes")
    if not passes:
        return "selector shares from two forwards with hooks"
    return (f"selector time share = median over {passes} forwards with hooks, the time/MAC ratio's distribution-free 95% "
            f"interval over those forwards in brackets")


def render_table(rows: list[dict[str, Any]], env: dict[str, Any], steps: int = 2) -> str:
    head = ("| batch | dtype | importance | rounds | speed-up (95% interval) | ideal | share of ideal | selectors: time share / MAC share | selector path |\n"
            "|---:|---|---|---:|---|---:|---:|---|---|\n")
    body = ""
    for r in rows:
        if r["status"] != "ok":
            body += f"| {r['batch_size']} | {r['dtype']} | {r['importance']} | | {r['status']}: {r['error']} | | | | |\n"
            continue
        noisy = " noisy" if r["noisy"] else ""
        ratio = f"{_f(r['selector_time_over_mac_share'], '.1f')}x"  # older runs: no interval
        if r.get("selector_time_over_mac_share_ci95"):
            low, high = r["selector_time_over_mac_share_ci95"]
            ratio = f"{r['selector_time_over_mac_share']:.2f}x ({low:.2f}-{high:.2f})"
        share = f"{_f(r['time_share_selectors'], '.2%')} / {_f(r['mac_share_selectors'], '.2%')} = {ratio}"
        body += (f"| {r['batch_size']} | {r['dtype']} | {r['importance']} | {r['rounds']} | {r['speedup_measured']:.3f}x ({r['speedup_ci95_low']:.3f}-{r['speedup_ci95_high']:.3f}){noisy}"
                 f" | {r['speedup_ideal']:.3f}x | {r['efficiency']:.1%} | {share} | {r['selector_path']} |\n")
    first = rows[0] if rows else {}
    caption = (f"{first.get('model')} ToSA keep {first.get('keep')} at {first.get('placement')} vs dense; device {env.get('device')} "
               f"({env.get('device_name')}), {first.get('threads')} threads, torch {env.get('torch')}. Speed-up = median over ABBA rounds of "
               f"dense step / ToSA step (rounds of {steps} steps each per side), distribution-free 95% interval of that median, 'noisy' when "
               f"wider than +-5%; ideal = dense GMACs / ToSA GMACs (selectors included); {_share_method(first)}.\n")
    return caption + "\n" + head + body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--placement", default="alternate")
    p.add_argument("--importance", default="mean,cls", help="comma-separated rules")
    p.add_argument("--batch-sizes", default="1,8,16,32,64")
    p.add_argument("--dtypes", default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--overwrite", action="store_true", help="measure every combination again")
    p.add_argument("--out", type=Path, default=Path("runs/tosa-speedup-grid"))
    a = p.parse_args(argv)
    batches, rules, dtypes = _ints(a.batch_sizes), _words(a.importance), _words(a.dtypes)
    if a.rounds < 2 or a.steps < 1 or a.warmup < 0 or not batches or min(batches) < 1:
        p.error("need --rounds >= 2, --steps >= 1, --warmup >= 0 and batch sizes >= 1")
    if not set(rules) <= {"mean", "cls"}:
        p.error(f"--importance: rules are mean and cls, got {a.importance!r}")
    device = resolve_device(a.device)
    for dt in dtypes:
        resolve_autocast(dt, torch.device(device))  # validate every dtype before any work

    check_out_dir(a.out, overwrite=True)
    if a.overwrite and (a.out / RECORDS).exists():
        (a.out / RECORDS).unlink()
    env = environment_record(device=device)
    if (a.out / RECORDS).exists() and (a.out / ENV).exists():
        store = RunStore.existing(a.out)
        first = json.loads((a.out / ENV).read_text())
        differ = [k for k in ("device_name", "torch", "torch_threads", "cpu_chunk_machine") if first.get(k) != env.get(k)]
        if differ:  # rows of one table come from one machine and one torch
            print(f"error: {a.out} was measured elsewhere ({', '.join(f'{k} {first.get(k)!r} there, {env.get(k)!r} here' for k in differ)}); "
                  f"use another --out", file=sys.stderr)
            return 2
    else:
        store = RunStore.create(a.out) if not (a.out / RECORDS).exists() else RunStore.existing(a.out)
        store.write_json(ENV, env)
    done = {}
    if (a.out / RECORDS).exists():
        for r in read_records(a.out / RECORDS).records:
            if r.get("variant") == ToSAReducer.variant and r.get("status") == "ok" and r.get("model") == a.model:
                done[(r["batch_size"], r["dtype"], r["options"]["importance"])] = True
    store.open_for_append()
    session = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    failed = False
    for dtype in dtypes:
        for rule in rules:
            for batch in batches:
                if (batch, dtype, rule) in done:
                    print(f"kept: batch {batch} {dtype} {rule} (measured in {a.out})", file=sys.stderr)
                    continue
                print(f"measuring: batch {batch} {dtype} {rule} ...", file=sys.stderr, flush=True)
                dense, tosa = measure_pair(store, a.model, a.keep, a.placement, rule, batch, dtype, device, a.rounds, a.steps, a.warmup, session,
                                           extra=lambda rec, b=batch: selector_shares(rec, b, device))
                failed |= tosa["status"] != "ok" or dense["status"] != "ok"
                print(f"  {tosa.get('speedup_paired') or 0:.3f}x of {tosa.get('speedup_ideal') or 0:.3f}x ideal = {tosa.get('speedup_efficiency') or 0:.1%}"
                      f"; selectors {tosa.get('time_share_selectors') or 0:.2%} of time, {tosa.get('mac_share_selectors') or 0:.2%} of MACs", file=sys.stderr)

    records = read_records(a.out / RECORDS).records
    by_key = {}
    for r in records:
        if r.get("model") == a.model and r.get("status") is not None:
            rule = r["options"].get("importance") if r["variant"] == ToSAReducer.variant else None
            by_key.setdefault((r["batch_size"], r["dtype"]), {})[rule or DENSE] = r
    rows = []
    for (batch, dtype), recs in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for rule in ("mean", "cls"):
            if rule in recs and DENSE in recs:
                rows.append(summary_row(recs[DENSE], recs[rule]))
    env = json.loads((a.out / ENV).read_text())
    store.write_json(SUMMARY, {"method": "see summary.md's caption", "rows": rows})
    (a.out / TABLE).write_text(render_table(rows, env, a.steps))
    print(render_table(rows, env, a.steps))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(run_script(main))
