"""A/A check: variants that compute exactly what dense computes must read 1.00.

Three controls, each timed against its dense twin with the sweep's own paired timing
(``measure_point``, ABBA rounds, median of the per-round ratios, 95% interval):

- ``dense`` against a second dense instance (``Settings.pair_dense``);
- ``tosa`` at keep 1.0 (k = N - 1: no block is reduced, the selectors never run);
- ``random`` at keep 1.0 (the same for the control).

With ``--compile MODE`` each control and its dense twin are compiled the same way
(compiled and warmed before timing; :mod:`tosa_bench.measure.compiled`).

Each is measured ``--repeats`` times with the measurement settings of a suite (default
``quick``: the default sweep's budget, batch 8 on DeiT-S on a CPU). It passes when every
control reads within +-``--tolerance`` (5%) of 1.00 in at least ``--need`` of the repeats
(9 of 10).

    python benchmarks/aa_check.py                                   # DeiT-S, the default sweep's settings
    python benchmarks/aa_check.py --model test_deep --repeats 2 --out /tmp/aa   # a quick look
    python benchmarks/aa_check.py --compile default --out runs/aa-compiled     # every model torch.compile'd

OUT is a run directory (replaced on each run): ``records.jsonl`` holds every repeat
(``aa_repeat`` says which; ``tosa-bench report OUT`` shows the last repeat of each),
``summary.json`` every figure and the verdict, ``env.json``. Exit code 0 when it passes,
1 when it does not, 2 when a point failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tosa_bench.errors import run_script
from tosa_bench.measure.env import environment_record
from tosa_bench.measure.point import measure_point
from tosa_bench.measure.spec import Point, compile_mode, resolve_device
from tosa_bench.precision import resolve_autocast
from tosa_bench.results.store import ENV, RunStore
from tosa_bench.sweep.session import check_out_dir
from tosa_bench.sweep.accuracy import ACCURACY_FIELDS
from tosa_bench.sweep.grid import GridPoint
from tosa_bench.sweep.runner import measure_one
from tosa_bench.sweep.suite import load_suite

SUMMARY = "summary.json"
CONTROLS = (("dense", {}), ("tosa", {"keep": 1.0}), ("random", {"keep": 1.0}))


def _no_accuracy(point: Point, stage) -> dict[str, Any]:
    return {**{k: None for k in ACCURACY_FIELDS}, "accuracy_reason": "not measured (benchmarks/aa_check.py)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--batch-size", type=int, default=None, help="default: the suite's CPU/CUDA batch size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: the suite's dtype for the device)")
    p.add_argument("--suite", default="quick", help="whose [measure] settings to use")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--need", type=int, default=None, help="repeats within tolerance needed (default: 9 of 10, all of fewer)")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--compile", default=None, metavar="MODE",
                   help="torch.compile mode for every model and its dense twin (default, max-autotune, reduce-overhead); default: eager")
    p.add_argument("--out", type=Path, default=Path("runs/aa-cpu"),
                   help="run directory, replaced on each run (the committed one: results/aa-cpu-avx512)")
    a = p.parse_args(argv)
    if a.repeats < 1 or not 0 < a.tolerance < 1:
        p.error("need --repeats >= 1 and --tolerance in (0, 1)")
    need = a.need if a.need is not None else (a.repeats - 1 if a.repeats >= 10 else a.repeats)

    suite = load_suite(a.suite)
    device = resolve_device(a.device)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    batch = a.batch_size or suite.batch_size[dev_type][0]
    dtype = a.dtype or suite.dtypes[dev_type][0]
    resolve_autocast(dtype, torch.device(device))  # a dtype the device cannot run is refused before any work
    mode = compile_mode(a.compile)  # a mode that is not one is refused before any work
    settings = replace(suite.settings(), latency=False, memory=False, pair_dense=True)

    check_out_dir(a.out, overwrite=True)  # never the root, home, a file or a folder that is not a run
    if a.out.exists():
        shutil.rmtree(a.out)  # one check, one result
    store = RunStore.create(a.out)
    env = environment_record(device=device)
    store.write_json(ENV, env)
    store.open_for_append()
    session = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    figures: dict[str, list[float]] = {name: [] for name, _ in CONTROLS}
    intervals: dict[str, list[list[float]]] = {name: [] for name, _ in CONTROLS}
    for rep in range(a.repeats):
        for name, options in CONTROLS:
            gp = GridPoint(Point(model=a.model, variant=name, options=options, batch_size=batch, dtype=dtype, device=device, compile=mode))
            torch.manual_seed(0)
            rec = measure_one(gp, settings, measure_point, _no_accuracy, lambda _s: None, run_id=store.path.name, session=session)
            rec["aa_repeat"] = rep + 1
            store.append(rec)
            if rec["status"] != "ok":
                print(f"error: {name}: {rec['error']}", file=sys.stderr)
                return 2
            figures[name].append(rec["speedup_paired"])
            intervals[name].append([rec["speedup_paired_ci_low"], rec["speedup_paired_ci_high"]])
            print(f"repeat {rep + 1}/{a.repeats} {name:6s} {rec['speedup_paired']:.3f} "
                  f"({rec['speedup_paired_ci_low']:.3f}-{rec['speedup_paired_ci_high']:.3f}), {rec['pair_rounds']} rounds",
                  file=sys.stderr)
    within = {n: sum(abs(s - 1) <= a.tolerance for s in v) for n, v in figures.items()}
    passed = all(w >= need for w in within.values())
    summary = {
        "model": a.model, "batch_size": batch, "dtype": dtype, "device": device, "device_name": env.get("device_name"),
        "compile": mode or "eager",
        "torch": env.get("torch"), "threads": torch.get_num_threads(), "suite_settings": a.suite,
        "repeats": a.repeats, "tolerance": a.tolerance, "need": need, "speedups": figures, "intervals95": intervals,
        "within_tolerance": within, "passed": passed,
        "method": "speedup_paired of measure_point (dense twin, ABBA rounds, median of per-round step-time ratios); "
                  "controls compute exactly what dense computes, so each must read 1.00",
    }
    store.write_json(SUMMARY, summary)
    print(json.dumps(summary, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(run_script(main))
