"""The regression gate: a run against a stored baseline (``tosa-bench check``).

A baseline (``results/baselines/*.json``) holds, per point, what :mod:`.compare` compares
(its configuration, deterministic metrics, and the time, memory and energy ratios to
dense with their 95% intervals), plus the environment it was measured in and the suite's name. The
gate compares a fresh run with it (:func:`check_run`):

- deterministic metrics must match exactly (floats to a stated relative 1e-12, or 1e-9
  for accuracy): any difference fails the gate;
- time, memory and energy are ratios to dense measured in the same run (energy only
  where both the baseline and the run have it: a machine without a readable counter
  has none); a change fails only when
  it is beyond the suite's per-metric tolerance (``[gate] tolerance``, default 10%) AND
  outside the noise (the 95% intervals of baseline and run do not overlap);
- a baseline from another device, CPU model or torch version is said so, and its time and
  memory ratios are not compared (deterministic metrics still are);
- a baseline point the run lacks (or that failed in it), or a run point the baseline
  lacks, fails the gate: the baseline must describe the suite exactly.

What the gate cannot judge, it measures again (speed-ups only: an energy ratio inside
the noise stays ``noisy`` and is reported as such). A speed-up beyond the tolerance whose
interval overlaps the baseline's (verdict ``noisy``, typically a run on a busy machine),
and then one judged ``regressed`` or ``same`` on an interval wider than the noise
threshold, is measured again (:func:`undecided` names those points;
:func:`tosa_bench.sweep.runner.remeasure_points` measures them, at most
:data:`~tosa_bench.sweep.runner.REMEASURE_TRIES` times each, within the suite's
``[gate] remeasure_budget_s``), each time pooling the new rounds with the earlier ones
(:func:`tosa_bench.measure.point.remeasure_speedup`), so its interval narrows until the
verdict is decided. What is still ``noisy`` then is said so, row by row
(:func:`still_noisy`), and the user's policy decides (:data:`ON_NOISY`, ``--on-noisy``):
``pass`` (the default) lets it pass, reported; ``fail`` fails the gate. Writing a baseline
(``--update-baseline``) measures again, within the same budget, the points whose
interval is wider than the suite's noise threshold (:func:`noisy_points`), and says which
of the written points are still that wide (:func:`noisy_lines`): a baseline measured on a
busy machine has wide intervals, and every later check could then only see changes
beyond them.

Exit codes (applied by the CLI): 0 nothing regressed, 1 a regression (or, with
``--on-noisy fail``, a metric still noisy), 2 bad input.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tosa_bench.errors import OutputPathError, RunStateError
from tosa_bench.results.compare import Comparison, Row, compare_records, point_label, summarize, with_ratios
from tosa_bench.results.load import RunData
from tosa_bench.results.store import write_atomic

BASELINE_FORMAT = "tosa-bench-baseline/1"
#: environment fields that must agree for time and memory ratios to be comparable
ENV_KEYS = ("device_type", "device_name", "cpu", "torch")
#: what the gate does with a metric still ``noisy`` after re-measuring (``--on-noisy``);
#: the first is the default
ON_NOISY = ("pass", "fail")


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


def environment_diff(a_env: Mapping[str, Any] | None, b_env: Mapping[str, Any] | None) -> str | None:
    """What differs between two environments (``torch '2.0.0' vs '2.14.1'; ...``), None
    when they match."""
    a, b = environment_key(a_env), environment_key(b_env)
    diffs = [f"{k} {a[k]!r} vs {b[k]!r}" for k in ENV_KEYS if a[k] != b[k]]
    return "; ".join(diffs) if diffs else None


def environment_mismatch(baseline_env: Mapping[str, Any] | None, run_env: Mapping[str, Any] | None) -> str | None:
    """One line naming what differs between the two environments, None when they match."""
    diff = environment_diff(baseline_env, run_env)
    return "baseline from another environment: " + diff if diff else None


def check_run(run: RunData, baseline: Baseline, tolerances: Mapping[str, float] | None = None) -> Comparison:
    """Compare ``run`` with ``baseline`` (module docstring). A row still ``noisy`` says in
    its ``why`` how often its point was measured again and how wide both intervals are."""
    mismatch = environment_mismatch(baseline.env, run.env)
    skip = {"ratio": mismatch + ": time, memory and energy not compared"} if mismatch else None
    current = [summarize(r) for r in with_ratios(run.records)]
    cmp = compare_records(baseline.points, current, tolerances, skip_kinds=skip)
    if mismatch:
        cmp.notes.append(mismatch + "; update the baseline on this machine to gate time, memory and energy")
    failed = [r for r in run.records if r.get("status") != "ok"]
    for r in failed:
        cmp.notes.append(f"not ok in the run: {summarize(r)['label']} ({r.get('status')}: {r.get('error')})")
    by_label = {point_label(r): r for r in run.records if r.get("status") == "ok"}
    for row in still_noisy(cmp):
        if row.metric != "speedup":
            row.why += f"; run {_halfwidth(row.new)}, baseline {_halfwidth(row.old)}; only speed-ups are measured again"
            continue
        again = int(by_label.get(row.point, {}).get("pair_measurements") or 1) - 1
        row.why += (f"; run {_halfwidth(row.new)}, baseline {_halfwidth(row.old)}; "
                    + (f"measured again {again} time{'s' if again != 1 else ''}" if again else "not measured again"))
    for row in cmp.by_verdict("regressed"):
        if row.metric == "speedup" and by_label.get(row.point, {}).get("speedup_paired_noisy") is True:
            row.why += (f"; the run's interval is {_halfwidth(row.new)}, wider than the noise threshold: measured on a busy "
                        "machine? Under heavy load the speed-ups of small models shift; confirm on a quiet one")
    return cmp


def _halfwidth(value: Any) -> str:
    """'+-12%': the half-width of a [value, low, high] triple relative to its value."""
    if isinstance(value, list) and len(value) == 3 and value[0]:
        return f"+-{(value[2] - value[1]) / (2 * value[0]):.0%}"
    return "no interval"


def still_noisy(cmp: Comparison) -> list[Row]:
    """The rows the gate could not judge: beyond the tolerance, inside the noise."""
    return cmp.by_verdict("noisy")


def undecided(run: RunData, baseline: Baseline, tolerances: Mapping[str, float] | None = None) -> list[str]:
    """Config hashes of the run's ok points that the gate measures again, most needed
    first: those :func:`check_run` cannot judge (a metric ``noisy``), then, among points
    whose speed-up interval is wider than the noise threshold (flagged noisy), those that
    read ``regressed`` (a failure is confirmed before it fails the gate: on a busy machine
    one of many intervals misses now and then) and those that read ``same`` (an interval
    that wide cannot rule out a change beyond the tolerance: a 2x slowdown's median can
    land within it by chance)."""
    cmp = check_run(run, baseline, tolerances)
    verdict = {r.point: r.verdict for r in cmp.rows if r.metric == "speedup"}
    noisy = {r.point for r in still_noisy(cmp) if r.metric == "speedup"}  # only the speed-up is measured again
    ok = [r for r in run.records if r.get("status") == "ok"]
    wide = [r for r in ok if r.get("speedup_paired_noisy") is True and point_label(r) not in noisy]
    return ([r["config_hash"] for r in ok if point_label(r) in noisy]
            + [r["config_hash"] for r in wide if verdict.get(point_label(r)) == "regressed"]
            + [r["config_hash"] for r in wide if verdict.get(point_label(r)) == "same"])


def noisy_points(run: RunData) -> list[str]:
    """Config hashes of the run's ok points whose speed-up is flagged noisy (its interval
    wider than the suite's noise threshold): what ``--update-baseline`` measures again."""
    return [r["config_hash"] for r in run.records if r.get("status") == "ok" and r.get("speedup_paired_noisy") is True]


def noisy_lines(run: RunData, threshold: float) -> list[str]:
    """One line per point of ``run`` still flagged noisy: its speed-up, interval,
    half-width against ``threshold``, and how often it was measured again."""
    out = []
    for r in run.records:
        if r.get("status") == "ok" and r.get("speedup_paired_noisy") is True:
            s, lo, hi = r["speedup_paired"], r["speedup_paired_ci_low"], r["speedup_paired_ci_high"]
            again = int(r.get("pair_measurements") or 1) - 1
            out.append(f"{point_label(r)}: speed-up {s:.3f} ({lo:.3f}-{hi:.3f}), {_halfwidth([s, lo, hi])} > +-{threshold:.0%}"
                       + (f", after {again} re-measurement{'s' if again != 1 else ''}" if again else ", not measured again"))
    return out


def gate_failures(cmp: Comparison, on_noisy: str = ON_NOISY[0]) -> list[str]:
    """Why the gate fails, one line each (empty: it passes). With ``on_noisy="fail"`` a
    metric still noisy fails it too."""
    if on_noisy not in ON_NOISY:
        raise ValueError(f"on_noisy: expected one of {', '.join(ON_NOISY)}, got {on_noisy!r}")
    out = [f"{r.point}: {r.metric} {r.verdict} ({r.why})" for r in cmp.by_verdict("regressed", "changed")]
    if on_noisy == "fail":
        out += [f"{r.point}: {r.metric} still noisy, not judged ({r.why}; --on-noisy fail)" for r in still_noisy(cmp)]
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
