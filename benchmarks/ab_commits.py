"""Benchmark: is this checkout slower than an earlier commit? Both in one process, paired.

Speed-ups measured on different days are hard to compare on a noisy machine: the 2-core
VM's round-to-round spread moved between about 1% and 12% from one day to the next. This
script removes the day: it extracts ``--base``'s ``tosa_bench`` package (``git archive``)
under another name, builds each model from both packages with the same weights, checks
they compute the same outputs, and times them in ABBA rounds in one process. The ratio
is old step / new step (above 1: this checkout is faster), the median over rounds with its
distribution-free 95% interval (``measure.timing.median_interval``: ranks 3 and 10 of 12
rounds, 7 and 18 of 24).
Dense, whose code a change may not touch, is the A/A control of the day.

    python benchmarks/ab_commits.py --base cb2562a --out results/ab-cpu-issue30

Writes ``summary.md`` and ``summary.json`` (one row per variant and batch) and
``env.json`` to OUT. Needs git and the repository's history. fp32, the CPU, DeiT-S.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tosa_bench.build import build_model  # noqa: E402
from tosa_bench.errors import OptionError, run_script  # noqa: E402
from tosa_bench.measure.env import environment_record  # noqa: E402
from tosa_bench.measure.timing import median_interval  # noqa: E402

OLD = "tosa_bench_base"
OPTIONS = {"dense": {}, "tosa": {"keep": 0.5}, "tome": {"r": 8}, "evit": {"keep": 0.5}, "random": {"keep": 0.5}}


def extract_base(commit: str, into: Path) -> str:
    """``commit``'s package under ``into/OLD`` with its imports renamed; returns the full hash.
    The compiled selector kernel keeps its own build name (it hashes the source), so the
    base's kernel is the base's."""
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], capture_output=True, text=True)
    if found.returncode != 0:
        raise OptionError(f"--base: {commit!r} is not a commit of {ROOT}")
    full = found.stdout.strip()
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", full, "tosa_bench"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    (into / "tosa_bench").rename(into / OLD)
    for path in (into / OLD).rglob("*"):
        if path.suffix in (".py", ".toml", ".cpp"):
            text = path.read_text()
            path.write_text(re.sub(r"\btosa_bench\b(?!_selector_)", OLD, text))
    return full


def paired(old, new, x: torch.Tensor, rounds: int) -> tuple[float, float, float, list[float]]:
    """Median and distribution-free 95% interval of old/new step-time ratios over ``rounds``
    ABBA rounds (:func:`median_interval`), and the ratios in round order."""
    with torch.inference_mode():
        for m in (old, new):
            m(x)
        ratios = []
        for _ in range(rounds):
            t = []
            for m in (old, new, new, old):
                t0 = time.perf_counter()
                m(x)
                t.append(time.perf_counter() - t0)
            ratios.append((t[0] + t[3]) / (t[1] + t[2]))
    lo, hi, _ = median_interval(ratios)
    return statistics.median(ratios), lo, hi, ratios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the earlier commit (anything git rev-parse takes)")
    p.add_argument("--variants", default="tosa,tome,dense")
    p.add_argument("--batch-sizes", default="8,16,32")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    variants = a.variants.split(",")
    unknown = [v for v in variants if v not in OPTIONS]
    if unknown:
        raise OptionError(f"--variants: unknown {', '.join(unknown)}; use {', '.join(OPTIONS)}")
    batches = [int(b) for b in a.batch_sizes.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = extract_base(a.base, Path(tmp))
        sys.path.insert(0, tmp)
        old_build = __import__(f"{OLD}.build", fromlist=["build_model"]).build_model
        for variant in variants:
            for batch in batches:
                torch.manual_seed(0)
                new = build_model(a.model, variant, **OPTIONS[variant]).eval()
                old = old_build(a.model, variant, **OPTIONS[variant]).eval()
                old.load_state_dict(new.state_dict())
                x = torch.randn(batch, 3, new.cfg.img_size, new.cfg.img_size)
                with torch.inference_mode():
                    if not torch.allclose(old(x), new(x), rtol=1e-4, atol=1e-4):
                        raise OptionError(f"{variant} computes different outputs at {a.base} and here: comparing their speed would be meaningless")
                med, lo, hi, ratios = paired(old, new, x, a.rounds)
                rows.append({"variant": variant, "batch": batch, "ratio": med, "low": lo, "high": hi, "rounds": a.rounds, "ratios": ratios})
                print(f"{variant} batch {batch}: base/this {med:.3f} ({lo:.3f}-{hi:.3f})", flush=True)
    env = environment_record("cpu", repo_path=ROOT)
    (a.out / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    (a.out / "summary.json").write_text(json.dumps({"base": base, "model": a.model, "rows": rows}, indent=1) + "\n")
    lines = [f"{a.model}, fp32, CPU ({env.get('cpu_model')}), {torch.get_num_threads()} threads, torch {torch.__version__}: step time of "
             f"commit {base[:7]} over this checkout ({env.get('git_commit', '?')[:7]}), same weights and images, one process, "
             f"{a.rounds} ABBA rounds; median ratio (above 1: this checkout is faster) and its distribution-free 95% interval.", "",
             "| variant | batch | base / this (95% interval) |", "|---|---:|---|"]
    lines += [f"| {r['variant']} | {r['batch']} | {r['ratio']:.3f} ({r['low']:.3f}-{r['high']:.3f}) |" for r in rows]
    (a.out / "summary.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
