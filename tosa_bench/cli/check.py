"""``tosa-bench compare RUN_A RUN_B`` and ``tosa-bench check`` (the regression gate).

Glue only: matching, verdicts and the baseline format are in
:mod:`tosa_bench.results.compare` and :mod:`tosa_bench.results.check`.
"""

from __future__ import annotations

import datetime as _dt
import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from tosa_bench.cli.common import app, guarded, out, output_file, say
from tosa_bench.errors import OptionError


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
    ratios to dense within each run; absolute throughput and latency are shown with --all."""
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


CHECK_HELP = """Regression gate: run a suite (or read --run DIR), compare it with a baseline,
and exit 0 when nothing regressed, 1 on a regression, 2 on bad input.

Deterministic metrics (params, GMACs, tokens per block, accuracy on a fixed subset) must
match exactly. Time (the paired speed-up) and memory (peak / dense's peak) are ratios to
dense measured in the same run; a change fails only when it is beyond the suite's
tolerance ([gate] tolerance, default 10%) and outside the noise (the 95% intervals do not
overlap). A baseline from another device, CPU or torch version is reported as such and
its time/memory are not compared. --update-baseline writes the run as the new baseline.

Writes check.md (for a CI summary or a pull-request comment) and check.json into the
run directory, or to --markdown/--json.
"""


@app.command("check", help=CHECK_HELP)
@guarded
def check_command(
    baseline: Path = typer.Option(..., "--baseline", help="Baseline JSON (e.g. results/baselines/ci-cpu.json)."),
    suite: Optional[Path] = typer.Option(None, "--suite", help="Suite to run (file or a name in suites/, e.g. ci)."),
    run: Optional[Path] = typer.Option(None, "--run", help="Compare this finished run instead of running the suite."),
    update_baseline: bool = typer.Option(False, "--update-baseline", help="Write the run as the new baseline (with its environment) and exit 0."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory for the suite (default runs/check-<suite>-<UTC time>)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the Markdown report here (e.g. $GITHUB_STEP_SUMMARY)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON report here."),
) -> None:
    from tosa_bench.results import load_run
    from tosa_bench.results.check import check_run, gate_failures, make_baseline, read_baseline, write_json
    from tosa_bench.results.compare import rich_table, to_markdown

    if (suite is None) == (run is None):
        raise OptionError("check: give exactly one of --suite (run it now) and --run DIR (a finished run)")
    base = None if update_baseline else read_baseline(baseline)  # bad input stops us before any measuring
    run_dir, tolerances, name = _run_dir(suite, run, out_dir)
    data = load_run(run_dir)
    if update_baseline:
        write_json(baseline, make_baseline(data, name))
        out.print(f"baseline written: {baseline} ({len(data.records)} points from {run_dir})", highlight=False, markup=False)
        return
    cmp = check_run(data, base, tolerances)
    failures = gate_failures(cmp)
    title = f"tosa-bench check: {run_dir.name} against {baseline}"
    report = to_markdown(cmp, title)
    verdict = ("**FAILED**: " + "; ".join(failures)) if failures else "passed: nothing regressed"
    report += "\n" + verdict + "\n"
    doc = {**cmp.to_json(), "passed": not failures, "failures": failures, "baseline": str(baseline), "run": str(run_dir)}
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


def _run_dir(suite: Optional[Path], run: Optional[Path], out_dir: Optional[Path]) -> tuple[Path, dict, Optional[str]]:
    """The run to judge, the suite's gate tolerances and its name: --run as given (its
    stored suite), or the suite measured now into a fresh directory."""
    from tosa_bench.results.store import RunStore
    from tosa_bench.sweep.session import plan_new, read_resolved
    from tosa_bench.sweep.suite import load_suite

    if run is not None:
        stored, _, _, _ = read_resolved(RunStore.existing(run))
        return Path(run), dict(stored.tolerance), stored.name
    from tosa_bench.cli.sweep import run_plan

    resolved = load_suite(suite)
    if out_dir is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        out_dir = Path("runs") / f"check-{resolved.name}-{stamp}"
    plan = plan_new(resolved, out_dir)
    run_plan(plan, figures=False)  # the gate judges numbers; `tosa-bench plot RUN` draws its figures
    return plan.store.path, dict(resolved.tolerance), resolved.name

