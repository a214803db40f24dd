"""``tosa-bench compare RUN_A RUN_B`` and ``tosa-bench check`` (the regression gate).

Glue only: matching, verdicts and the baseline format are in
:mod:`tosa_bench.results.compare` and :mod:`tosa_bench.results.check`.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer

from tosa_bench.cli.common import COMPILE_MODE_HELP, app, compile_modes, guarded, out, output_file, say
from tosa_bench.errors import OptionError

if TYPE_CHECKING:  # pragma: no cover
    from tosa_bench.sweep.grid import GridPoint
    from tosa_bench.sweep.suite import Suite


class CompareFormat(str, Enum):
    table = "table"
    md = "md"
    json = "json"


@app.command("compare")
@guarded
def compare_command(
    run_a: Path = typer.Argument(..., help="The old run directory."),
    run_b: Path = typer.Argument(..., help="The new run directory."),
    fmt: CompareFormat = typer.Option(CompareFormat.table, "--format", "-f", help="table, md or json."),
    show_all: bool = typer.Option(False, "--all", help="Show every metric, not only what changed or is beyond the noise."),
    tolerance: float = typer.Option(0.10, "--tolerance", help="Relative tolerance of the time and memory ratios (0.10 = 10%)."),
) -> None:
    """Compare two runs point by point, matched by configuration (model, variant, options,
    batch, dtype; not paths or machine): old, new, change, and whether the change is beyond
    the tolerance and outside the noise (95% intervals). Time and memory are compared as
    ratios to dense within each run; absolute throughput and latency are shown with --all.

    Example: tosa-bench compare runs/before runs/after --format md"""
    from tosa_bench.results.compare import METRICS, VERDICTS, compare_runs, rich_table, to_markdown

    if not 0 < tolerance < 10:
        raise OptionError(f"--tolerance: expected a relative tolerance in (0, 10), got {tolerance}")
    cmp = compare_runs(run_a, run_b, {m.name: tolerance for m in METRICS if m.kind == "ratio"})
    show = VERDICTS if show_all else None
    title = f"{run_a} -> {run_b}"
    if fmt is CompareFormat.json:
        typer.echo(json.dumps(cmp.to_json(), indent=1, default=str))
    elif fmt is CompareFormat.md:
        typer.echo(to_markdown(cmp, title, show), nl=False)
    else:
        out.print(rich_table(cmp, title, show))
        for line in _summary(cmp):
            out.print(line, highlight=False, markup=False)


def _summary(cmp) -> list[str]:
    counts = ", ".join(f"{n} {v}" for v, n in cmp.to_json()["counts"].items()) or "nothing compared"
    lines = [f"{len({r.point for r in cmp.rows})} points matched; metrics: {counts}"]
    lines += [f"note: {n}" for n in cmp.notes]
    lines += [f"only in the old run: {p}" for p in cmp.only_old] + [f"only in the new run: {p}" for p in cmp.only_new]
    return lines


class OnNoisy(str, Enum):
    pass_ = "pass"
    fail = "fail"


CHECK_HELP = """Regression gate: run a suite (or read --run DIR), compare it with a baseline,
and exit 0 when nothing regressed, 1 on a regression, 2 on bad input.

Deterministic metrics (params, GMACs, tokens per block, accuracy on a fixed subset) must
match exactly. Time (the paired speed-up) and memory (peak / dense's peak) are ratios to
dense measured in the same run; a change fails only when it is beyond the suite's
tolerance (\\[gate] tolerance, default 10%) and outside the noise (the 95% intervals do not
overlap). A baseline from another device, CPU or torch version is reported as such and
its time/memory are not compared.

A speed-up beyond the tolerance but inside the noise cannot be judged: the gate measures
that point again (pooling its rounds, a few times at most, within the suite's
\\[gate] remeasure_budget_s, default 60 s) and judges again; so are a regression and a
"same" judged on an interval wider than the suite's noise threshold. What is still noisy
is reported as such; --on-noisy says what it does to the gate (default pass).

--update-baseline writes the run as the new baseline; points whose interval is wider than
the suite's noise threshold are measured again first (same budget), and those still that
wide are named.

Writes check.md (for a CI summary or a pull-request comment) and check.json into the
run directory, or to --markdown/--json. More: docs/gate.md.

Example: tosa-bench check --suite ci --baseline results/baselines/ci-cpu.json
"""


@app.command("check", help=CHECK_HELP)
@guarded
def check_command(
    baseline: Path = typer.Option(..., "--baseline", help="Baseline JSON (e.g. results/baselines/ci-cpu.json)."),
    suite: Optional[Path] = typer.Option(None, "--suite", help="Suite to run (file or a name in suites/, e.g. ci)."),
    run: Optional[Path] = typer.Option(None, "--run", help="Compare this finished run instead of running the suite."),
    compile: bool = typer.Option(False, "--compile", help="Run the suite compiled (mode: --compile-mode); its points then match only compiled baseline points."),
    compile_mode: Optional[list[str]] = typer.Option(None, "--compile-mode", help=COMPILE_MODE_HELP),
    update_baseline: bool = typer.Option(False, "--update-baseline", help="Write the run as the new baseline (with its environment) and exit 0."),
    on_noisy: OnNoisy = typer.Option(OnNoisy.pass_, "--on-noisy", help="A speed-up still noisy after re-measuring (beyond the tolerance, inside the noise): pass (default: reported, the gate passes) or fail (exit 1)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory for the suite (default runs/check-<suite>-<UTC time>)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the Markdown report here (e.g. $GITHUB_STEP_SUMMARY)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON report here."),
) -> None:
    from tosa_bench.results import load_run
    from tosa_bench.results.check import (check_run, gate_failures, make_baseline, noisy_lines, noisy_points, read_baseline,
                                          still_noisy, undecided, write_json)
    from tosa_bench.results.compare import rich_table, to_markdown

    if (suite is None) == (run is None):
        raise OptionError("check: give exactly one of --suite (run it now) and --run DIR (a finished run)")
    modes = compile_modes(compile, compile_mode)
    if modes is not None and run is not None:
        raise OptionError("check: --compile/--compile-mode apply to a suite run now (--suite), not to a finished --run")
    base = None if update_baseline else read_baseline(baseline)  # bad input stops us before any measuring
    judged = _run_dir(suite, run, out_dir, modes)
    run_dir, tolerances, name = judged.path, dict(judged.suite.tolerance), judged.suite.name
    if update_baseline:
        make_baseline(load_run(run_dir), name)  # a run with failed points is refused before anything is measured again
        notes = _remeasure(judged, lambda: noisy_points(load_run(run_dir)), "speed-ups wider than the noise threshold")
        data = load_run(run_dir)
        write_json(baseline, make_baseline(data, name))
        for line in notes:
            out.print(f"note: {line}", highlight=False, markup=False)
        out.print(f"baseline written: {baseline} ({len(data.records)} points from {run_dir})", highlight=False, markup=False)
        wide = noisy_lines(data, judged.suite.noise_threshold)
        for line in wide:
            say(line, prefix="noisy baseline point:", style="yellow")
        if wide:
            say(f"{len(wide)} of {len(data.records)} points of {baseline} are noisy (95% interval wider than "
                f"+-{judged.suite.noise_threshold:.0%}): later checks cannot see changes inside those intervals; "
                "remake it on a quieter machine or with a larger pair_budget_s / remeasure_budget_s", prefix="warning:", style="yellow")
        return
    notes = _remeasure(judged, lambda: undecided(load_run(run_dir), base, tolerances),
                       "speed-ups the gate could not judge (noisy) or judged on an interval wider than the noise threshold")
    cmp = check_run(load_run(run_dir), base, tolerances)
    cmp.notes += notes
    noisy = still_noisy(cmp)
    if noisy:
        effect = "fail the gate (--on-noisy fail)" if on_noisy is OnNoisy.fail else "pass (--on-noisy pass)"
        cmp.notes.append(f"{len(noisy)} metric(s) still noisy, not judged, {effect}: "
                         + "; ".join(f"{r.point} {r.metric} ({r.why})" for r in noisy))
    failures = gate_failures(cmp, on_noisy.value)
    title = f"tosa-bench check: {run_dir.name} against {baseline}"
    report = to_markdown(cmp, title)
    verdict = ("**FAILED**: " + "; ".join(failures)) if failures else "passed: nothing regressed"
    if noisy and not failures:
        verdict += f" ({len(noisy)} still noisy, not judged: --on-noisy pass)"
    report += "\n" + verdict + "\n"
    doc = {**cmp.to_json(), "passed": not failures, "failures": failures, "on_noisy": on_noisy.value,
           "still_noisy": [r.point for r in noisy], "baseline": str(baseline), "run": str(run_dir)}
    for target, text in ((run_dir / "check.md", report), (markdown, report)):
        if target is not None:
            with output_file(target, "--markdown") as fh:
                fh.write(text)
    write_json(run_dir / "check.json", doc)
    if json_out is not None:
        write_json(json_out, doc)
    out.print(rich_table(cmp, title))
    for line in _summary(cmp):
        out.print(line, highlight=False, markup=False)
    if failures:
        for f in failures:
            say(f, prefix="regression:", style="bold red")
        raise typer.Exit(1)
    out.print(f"gate passed (report: {run_dir / 'check.md'})", highlight=False, markup=False)


@dataclass
class _Judged:
    """The run the gate judges: its directory, suite and grid; ``fresh``: measured now by
    this command (else a finished run given with --run)."""

    path: Path
    suite: "Suite"
    grid: "list[GridPoint]"
    fresh: bool


def _run_dir(suite: Optional[Path], run: Optional[Path], out_dir: Optional[Path], modes: Optional[tuple[str, ...]] = None) -> _Judged:
    """The run to judge with its suite (tolerances, name, re-measure budget) and grid:
    --run as given (its stored suite), or the suite measured now into a fresh directory."""
    from tosa_bench.results.store import RunStore
    from tosa_bench.sweep.session import plan_new, read_resolved
    from tosa_bench.sweep.suite import load_suite

    if run is not None:
        stored, grid, _, _ = read_resolved(RunStore.existing(run))
        return _Judged(Path(run), stored, grid, fresh=False)
    from tosa_bench.cli.sweep import run_plan

    resolved = load_suite(suite).with_overrides(compile=modes)
    if out_dir is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        out_dir = Path("runs") / f"check-{resolved.name}-{stamp}"
    plan = plan_new(resolved, out_dir)
    run_plan(plan, figures=False)  # the gate judges numbers; `tosa-bench plot RUN` draws its figures
    return _Judged(plan.store.path, plan.suite, plan.grid, fresh=True)


def _remeasure(judged: _Judged, wanted: Callable[[], list[str]], what: str) -> list[str]:
    """Measure again the points ``wanted()`` names, within the suite's budget; the notes
    that say what was done (or why nothing could be). A finished run (--run) is measured
    again only on the kind of machine it was measured on, under its lock."""
    from tosa_bench.results import load_run
    from tosa_bench.results.check import environment_diff
    from tosa_bench.sweep import lock
    from tosa_bench.sweep.runner import REMEASURE_TRIES, remeasure_points
    from tosa_bench.results.store import RunStore
    from tosa_bench.sweep.session import write_tables

    first = wanted()
    if not first:
        return []
    budget = judged.suite.remeasure_budget_s
    if budget <= 0:
        return [f"{len(first)} point(s) with {what} not measured again ([gate] remeasure_budget_s = 0)"]
    if not judged.fresh:
        from tosa_bench.measure.env import environment_record

        env = load_run(judged.path).env or {}
        diff = environment_diff(env, environment_record(device=env.get("device")))
        if diff:
            return [f"{len(first)} point(s) with {what} not measured again: the run was measured on another machine ({diff})"]
    taken = lock.acquire(judged.path)
    try:
        store = RunStore(judged.path)
        done = remeasure_points(wanted, judged.grid, store, judged.suite.settings(), budget,
                                progress=lambda line: say(line, prefix="gate:"))
        write_tables(store)
    finally:
        if taken:
            lock.release(judged.path)
    left = wanted()
    notes = [f"measured again {len(done.times)} point(s) with {what}: {done.total} re-measurement(s) (at most {REMEASURE_TRIES} each) "
             f"in {done.spent_s:.0f} s of the {budget:g} s budget ([gate] remeasure_budget_s); "
             + (f"{len(left)} still so" if left else "none left") + ("; the budget ran out" if done.out_of_budget else "")]
    notes += [f"re-measuring failed: {e}" for e in done.errors]
    return notes
