"""The regression gate: a run against a stored baseline (``tosa-bench check``).

A baseline (``results/baselines/*.json``) holds, per point, what :mod:`.compare` compares
(its configuration, deterministic metrics, and the time and memory ratios to dense with
their 95% intervals), plus the environment it was measured in and the suite's name. The
gate compares a fresh run with it (:func:`check_run`):

- deterministic metrics must match exactly (floats to a stated relative 1e-12, or 1e-9
  for accuracy): any difference fails the gate;
- time and memory are ratios to dense measured in the same run; a change fails only when
  it is beyond the suite's per-metric tolerance (``[gate] tolerance``, default 10%) AND
  outside the noise (the 95% intervals of baseline and run do not overlap);
- a baseline from another device, CPU model or torch version is said so, and its time and
  memory ratios are not compared (deterministic metrics still are);
- a baseline point the run lacks (or that failed in it), or a run point the baseline
  lacks, fails the gate: the baseline must describe the suite exactly.

Exit codes (applied by the CLI): 0 nothing regressed, 1 a regression, 2 bad input.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tosa_bench.errors import OutputPathError, RunStateError
from tosa_bench.results.compare import Comparison, compare_records, summarize, with_ratios
from tosa_bench.results.load import RunData
from tosa_bench.results.store import write_atomic

BASELINE_FORMAT = "tosa-bench-baseline/1"
#: environment fields that must agree for time and memory ratios to be comparable
ENV_KEYS = ("device_type", "device_name", "cpu", "torch")


@dataclass
class Baseline:
    """A stored baseline: ``points`` (summaries), ``env`` (where it was measured),
    ``suite`` (its name), ``path``."""

    points: list[dict[str, Any]]
    env: dict[str, Any]
    suite: str | None
    path: Path


def read_baseline(path: str | Path) -> Baseline:
    """Read a baseline file; :class:`~tosa_bench.errors.RunStateError` naming it when it is
    missing or not a baseline."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise RunStateError(f"baseline {p}: not found (make one with --update-baseline)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunStateError(f"baseline {p}: cannot be read ({getattr(err, 'strerror', None) or err})") from None
    except ValueError as err:
        raise RunStateError(f"baseline {p}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT or not isinstance(doc.get("points"), list):
        raise RunStateError(f"baseline {p}: not a tosa-bench baseline (expected \"format\": \"{BASELINE_FORMAT}\" and a list of points)")
    return Baseline(doc["points"], doc.get("env") or {}, doc.get("suite"), p)


def environment_key(env: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of an environment record that decides whether timings compare: device
    type and name, CPU model, torch version."""
    env = env or {}
    device = str(env.get("device") or "")
    return {
        "device_type": device.split(":")[0] or None,
        "device_name": env.get("device_name"),
        "cpu": env.get("cpu") or env.get("cpu_model"),
        "torch": env.get("torch") or env.get("torch_version"),
    }


def environment_mismatch(baseline_env: Mapping[str, Any] | None, run_env: Mapping[str, Any] | None) -> str | None:
    """One line naming what differs between the two environments, None when they match."""
    a, b = environment_key(baseline_env), environment_key(run_env)
    diffs = [f"{k} {a[k]!r} vs {b[k]!r}" for k in ENV_KEYS if a[k] != b[k]]
    return "baseline from another environment: " + "; ".join(diffs) if diffs else None


def check_run(run: RunData, baseline: Baseline, tolerances: Mapping[str, float] | None = None) -> Comparison:
    """Compare ``run`` with ``baseline`` (module docstring)."""
    mismatch = environment_mismatch(baseline.env, run.env)
    skip = {"ratio": mismatch + ": time and memory not compared"} if mismatch else None
    current = [summarize(r) for r in with_ratios(run.records)]
    cmp = compare_records(baseline.points, current, tolerances, skip_kinds=skip)
    if mismatch:
        cmp.notes.append(mismatch + "; update the baseline on this machine to gate time and memory")
    failed = [r for r in run.records if r.get("status") != "ok"]
    for r in failed:
        cmp.notes.append(f"not ok in the run: {summarize(r)['label']} ({r.get('status')}: {r.get('error')})")
    return cmp


def gate_failures(cmp: Comparison) -> list[str]:
    """Why the gate fails, one line each (empty: it passes)."""
    out = [f"{r.point}: {r.metric} {r.verdict} ({r.why})" for r in cmp.by_verdict("regressed", "changed")]
    out += [f"{p}: in the baseline but not measured ok in the run" for p in cmp.only_old]
    out += [f"{p}: measured but not in the baseline (update the baseline)" for p in cmp.only_new]
    return out


def make_baseline(run: RunData, suite_name: str | None) -> dict[str, Any]:
    """The baseline document of ``run`` (its ok points only; a failed point is refused: a
    baseline must not bless a failure)."""
    failed = [summarize(r)["label"] for r in run.records if r.get("status") != "ok"]
    if failed:
        raise RunStateError(f"{run.path}: {len(failed)} point(s) not ok ({', '.join(failed[:3])}); refusing to make them a baseline")
    return {
        "format": BASELINE_FORMAT,
        "suite": suite_name,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.path.name),
        "env": run.env or {},
        "points": [summarize(r) for r in with_ratios(run.records)],
    }


def write_json(path: str | Path, doc: Any) -> None:
    """Write ``doc`` as JSON atomically; OutputPathError naming the path if it cannot be."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, json.dumps(doc, indent=1, default=str) + "\n")
    except OSError as err:
        raise OutputPathError(f"{p}: cannot write ({err.strerror or err})") from None
