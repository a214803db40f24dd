"""``tosa-bench sweep``, ``tosa-bench report`` and ``tosa-bench merge``.

The logic lives in :mod:`tosa_bench.sweep` and :mod:`tosa_bench.results`; this module
only maps options onto a suite, draws progress and prints tables.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from tosa_bench.cli.common import DType, VARIANT_HELP, app, check_output_file, err, guarded, out, output_file, say
from tosa_bench.errors import OptionError

SWEEP_HELP = """Measure a grid of models x variants x settings, storing each point.

With no options: DeiT-S at 224 on the best device (cuda if visible, else
cpu); dense, tosa, tome, evit and the random control at --keep 0.5; batch 8
on a CPU, 64 on CUDA; fp32; a 2.5 s timing budget per phase (the suite
suites/quick.toml). Every record states its batch size and settings.

What --keep K means per variant (without --match):

  dense: ignores keep (once per model/batch/dtype/device).
  tosa: K of the patch tokens run each selected block (--placement);
  the others bypass it.
  random: the control, ToSA's mechanism with random tokens, same K.
  tome: r = round((1 - K)(N - 1) / L) tokens merged per block
  (DeiT-S/224, K 0.5: r = 8), or each explicit --tome-r.
  evit: keep rate K at each pruning block (--evit-loc, default 3,6,9).

--match gmacs: ToMe's r and EViT's keep are chosen so that their GMACs
(closed form, no forward pass) is closest to ToSA's at the same K and the
first placement, so methods are compared at equal cost.

--model, --variant, --keep, --placement, --tome-r, --evit-loc,
--batch-size, --dtype, --device are repeatable; lists multiply and replace
the suite's. --checkpoint, --selector and --depth-checkpoint take PATH (for
every model) or MODEL=PATH.

Results go to results/<run-id>/ (or --out DIR): records.jsonl (one line
per point, fsync'd), env.json, suite.toml (the resolved grid), table.md and
table.csv. --resume DIR measures what is not ok yet; --shard i/n runs 1/n
of the grid (by sorted config hash); `tosa-bench merge` joins shards.

Exit code 0: every point ok; 1: some points recorded as error or oom, or
an internal error (a bug: its traceback file is named; --debug prints it);
2: bad input (nothing measured).
"""


class Match(str, Enum):
    none = "none"
    gmacs = "gmacs"


class Format(str, Enum):
    table = "table"
    md = "md"
    latex = "latex"
    csv = "csv"


def weights_table(values: Optional[list[str]], option: str) -> Optional[dict[str, str]]:
    """['a.pth'] -> {'*': 'a.pth'}; ['deit_small_patch16_224=a.pth'] -> {model: path}."""
    if not values:
        return None
    from tosa_bench.models.configs import MODEL_CONFIGS

    table: dict[str, str] = {}
    for v in values:
        model, sep, path = v.partition("=")
        key, path = (model, path) if sep and model in MODEL_CONFIGS else ("*", v)
        if key in table:
            raise OptionError(f"{option}: given twice for {'every model' if key == '*' else key}")
        table[key] = path
    return table


def _tuple(values: Optional[list[Any]]) -> Optional[tuple[Any, ...]]:
    return tuple(v.value if isinstance(v, Enum) else v for v in values) if values else None


class _Bar:
    """Runner progress on a rich progress bar (terminal) or one line per point (logs)."""

    def __init__(self, total_hint: int) -> None:
        self.live = out.is_terminal
        self.bar = None
        self.task = None
        self.current = ""
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=out, refresh_per_second=4)
            self.task = self.bar.add_task("sweep", total=total_hint)

    def __enter__(self) -> "_Bar":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start(self, index: int, total: int, gp: Any) -> None:
        p = gp.point
        self.current = f"{p.model} {p.variant} {_short(p.options)} b{p.batch_size} {p.dtype} {p.device}"
        if self.bar is not None:
            from rich.markup import escape

            self.bar.update(self.task, total=total, description=escape(self.current))

    def stage(self, label: str) -> None:
        if self.bar is not None:
            from rich.markup import escape

            self.bar.update(self.task, description=f"{escape(self.current)} [dim]{escape(label)}[/]")

    def done(self, record: dict[str, Any]) -> None:
        tp = record.get("throughput_img_s")
        status = record["status"]
        what = (f"{tp:.1f} im/s, {record.get('gmacs') or 0:.3g} GMACs" if status == "ok" and tp is not None
                else (f"{record.get('gmacs') or 0:.3g} GMACs" if status == "ok" else record.get("error")))
        line = f"{'ok ' if status == 'ok' else status}  {self.current}: {what} ({record['elapsed_s']:.1f} s)"
        (self.bar.console if self.bar is not None else out).print(line, markup=False, highlight=False)
        if self.bar is not None:
            self.bar.advance(self.task)


def _short(options: dict[str, Any]) -> str:
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in options.items())


@app.command("sweep", help=SWEEP_HELP)
@guarded
def sweep_command(
    suite: Optional[Path] = typer.Option(None, "--suite", help="Suite TOML file (or a name in suites/, e.g. quick, ci)."),
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Model (repeatable); see `tosa-bench models`."),
    variant: Optional[list[str]] = typer.Option(None, "--variant", "-v", help=VARIANT_HELP + " Repeatable."),
    keep: Optional[list[float]] = typer.Option(None, "--keep", "-k", help="Keep ratio in (0, 1] (repeatable); meaning per variant above."),
    placement: Optional[list[str]] = typer.Option(None, "--placement", help="ToSA/random placement (repeatable): alternate, alternate-even, second-half, all, last:K or indices 3,5,7."),
    tome_r: Optional[list[int]] = typer.Option(None, "--tome-r", help="Explicit ToMe r (repeatable); replaces the keep mapping."),
    evit_loc: Optional[list[str]] = typer.Option(None, "--evit-loc", help="EViT pruning blocks, 0-based, e.g. 3,6,9 (repeatable)."),
    batch_size: Optional[list[int]] = typer.Option(None, "--batch-size", "-b", help="Batch size for throughput (repeatable; every device)."),
    dtype: Optional[list[DType]] = typer.Option(None, "--dtype", help="Precision (repeatable; fp16 on CUDA only)."),
    device: Optional[list[str]] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (repeatable)."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Input side in pixels (default: the model's)."),
    checkpoint: Optional[list[str]] = typer.Option(None, "--checkpoint", help="Backbone weights: PATH or MODEL=PATH (repeatable)."),
    selector: Optional[list[str]] = typer.Option(None, "--selector", help="Trained ToSA selector weights: PATH or MODEL=PATH."),
    depth_checkpoint: Optional[list[str]] = typer.Option(None, "--depth-checkpoint", help="Depth model weights (with --nyu): PATH or MODEL=PATH."),
    match: Optional[Match] = typer.Option(None, "--match", help="gmacs: ToMe/EViT at ToSA's GMACs (see above)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the random control."),
    importance: Optional[str] = typer.Option(None, "--importance", help="ToSA importance rule: mean (attention received, over heads and queries; default) or cls (from the CLS query; needs only the CLS row of the maps)."),
    imagenet: Optional[Path] = typer.Option(None, "--imagenet", help="ImageNet-val folder: adds top1/top5 per point."),
    nyu: Optional[Path] = typer.Option(None, "--nyu", help="NYU Depth v2 (.mat, folder or BTS list): depth metrics per point."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only N images (class-balanced for ImageNet)."),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size", help="Batch size for accuracy (default: the point's)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers for accuracy."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warm-up steps per timing phase."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed steps per phase (at most)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Seconds per timing phase, warm-up included (0: none)."),
    timing: Optional[bool] = typer.Option(None, "--timing/--no-timing", help="Measure throughput and latency."),
    latency: Optional[bool] = typer.Option(None, "--latency/--no-latency", help="Measure batch-1 latency."),
    memory: Optional[bool] = typer.Option(None, "--memory/--no-memory", help="Measure peak memory."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default results/<run-id>)."),
    results: Path = typer.Option(Path("results"), "--results", help="Where default run directories go."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue RUN_DIR: measure the points not ok yet."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Run shard i of n (e.g. 2/3) of the grid."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved grid and exit (nothing measured)."),
) -> None:
    from tosa_bench.sweep.grid import expand, parse_shard, select_shard
    from tosa_bench.sweep.session import plan_new, plan_resume
    from tosa_bench.sweep.suite import Suite, load_suite

    overrides = dict(
        models=_tuple(model), variants=_tuple(variant), keeps=_tuple(keep), placements=_tuple(placement),
        tome_r=_tuple(tome_r), evit_locations=_tuple(evit_loc), batch_size=_tuple(batch_size), dtypes=_tuple(dtype),
        devices=_tuple(device), img_size=img_size, match=match.value if match else None, seed=seed, importance=importance,
        checkpoint=weights_table(checkpoint, "--checkpoint"), selector=weights_table(selector, "--selector"),
        depth_checkpoint=weights_table(depth_checkpoint, "--depth-checkpoint"),
        imagenet=str(imagenet) if imagenet else None, nyu=str(nyu) if nyu else None, limit=limit,
        eval_batch_size=eval_batch_size, num_workers=workers, warmup=warmup, repeats=repeats,
        time_budget_s=time_budget, timing=timing, latency=latency, memory=memory,
    )
    if resume is not None:
        given = [k for k, v in overrides.items() if v is not None] + [n for n, v in (("--suite", suite), ("--out", out_dir), ("--shard", shard)) if v is not None]
        if given:
            raise OptionError(f"resume: --resume runs the grid and settings stored in {resume}/suite.toml; drop {given[0]}")
        plan = plan_resume(resume)
    else:
        base = load_suite(suite) if suite is not None else Suite()
        resolved = base.with_overrides(**overrides)
        shard_spec = parse_shard(shard)
        if dry_run:
            _print_grid(select_shard(expand(resolved), shard_spec), resolved)
            return
        plan = plan_new(resolved, out_dir, shard_spec, results)
    _run(plan)


def _print_grid(points: list, suite: Any) -> None:
    from rich.table import Table

    from tosa_bench.measure.analytic import analytic_gmacs

    t = Table(title=f"grid of {suite.name}: {len(points)} points (nothing measured)")
    for c in ("hash", "model", "variant", "options", "keeps", "batch", "dtype", "device", "GMACs (formula)"):
        t.add_column(c)
    for gp in points:
        p = gp.point
        g = analytic_gmacs(p.model, p.variant, p.options, p.img_size)
        t.add_row(gp.hash, p.model, p.variant, _short(p.options), ",".join(map(str, gp.keeps)) or "-",
                  str(p.batch_size), p.dtype, p.device, f"{g:.3f}")
    out.print(t)


def _run(plan: Any) -> None:
    """Measure a planned sweep (:func:`run_plan`); exit 1 when a point is not ok."""
    summary = run_plan(plan)
    failed = {k: v for k, v in summary.status.items() if k != "ok"}
    if failed:
        err.print("points not ok: " + ", ".join(f"{v} {k}" for k, v in failed.items()) + " (see status/error in records.jsonl)",
                  highlight=False, markup=False)
        raise typer.Exit(1)


def run_plan(plan: Any) -> Any:
    """Measure the points of ``plan`` with a progress bar, rewrite the tables, print the
    table; returns the runner's summary (Ctrl-C exits 130 with the resume hint)."""
    from tosa_bench.results import load_run
    from tosa_bench.results.tables import render
    from tosa_bench.sweep.runner import run_points
    from tosa_bench.sweep.session import write_tables

    store = plan.store
    shard = f" (shard {plan.shard[0]}/{plan.shard[1]} of {len(plan.grid)})" if plan.shard else ""
    out.print(f"{'resuming' if plan.resumed else 'sweep'} {plan.run_id}: {len(plan.points)} points{shard} -> {store.path}",
              highlight=False, markup=False)
    try:
        with _Bar(len(plan.points)) as bar:
            summary = run_points(plan.points, store, plan.suite.settings(),
                                 accuracy=plan.accuracy.evaluate if plan.accuracy is not None else None,
                                 progress=bar, run_id=plan.run_id)
    except KeyboardInterrupt:
        err.print(f"interrupted: finished points are in {store.path}; continue with: tosa-bench sweep --resume {store.path}",
                  highlight=False, markup=False)
        raise typer.Exit(130) from None
    if summary.skipped:
        out.print(f"{summary.skipped} point{'s' if summary.skipped != 1 else ''} already ok, skipped", highlight=False)
    write_tables(store)
    run = load_run(store.path)
    if run.records:
        _print_wide(render(run, "table"))
    out.print(f"results: {store.path}", highlight=False, markup=False)
    return summary


def _print_wide(renderable: Any) -> None:
    """Print to the terminal as is; in logs (not a terminal, where rich assumes 80
    columns) at 160 columns so the table is not squeezed."""
    if out.is_terminal:
        out.print(renderable)
    else:
        import sys

        from rich.console import Console

        Console(file=sys.stdout, width=160).print(renderable)


@app.command("report")
@guarded
def report_command(
    run_dir: Path = typer.Argument(..., help="A sweep run directory (results/<run-id>)."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, md, latex or csv."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """The comparison tables of a run again, from its store alone."""
    from tosa_bench.results import load_run
    from tosa_bench.results.tables import render

    if output is not None:
        check_output_file(output, "--output")  # before reading the run
    run = load_run(run_dir)
    if run.torn_tail:
        say(f"note: the last line of {run.path}/records.jsonl is incomplete (a killed run) and was skipped")
    if run.bad_lines:
        say(f"note: unreadable lines {run.bad_lines[:5]} of {run.path}/records.jsonl were skipped")
    result = render(run, fmt.value)
    if fmt is Format.table:
        if output is not None:
            from rich.console import Console

            with output_file(output, "--output") as fh:
                Console(file=fh, width=160).print(result)
        else:
            _print_wide(result)
        return
    if output is not None:
        with output_file(output, "--output") as fh:
            fh.write(result)
    else:
        typer.echo(result, nl=False)


@app.command("merge")
@guarded
def merge_command(
    runs: list[Path] = typer.Argument(..., help="Run directories to join (e.g. the shards of one sweep)."),
    out_dir: Path = typer.Option(..., "--out", help="New run directory for the merged run."),
) -> None:
    """Join shard outputs into one run; refuses one configuration with two different results."""
    from tosa_bench.sweep.merge import merge_runs

    summary = merge_runs(runs, out_dir)
    out.print(f"merged {len(runs)} runs: {summary.records} of {summary.grid} grid points -> {out_dir}", highlight=False, markup=False)
    if summary.missing:
        err.print(f"note: {len(summary.missing)} grid points have no record (e.g. {summary.missing[0]}); "
                  "run the missing shard or --resume it, then merge again", highlight=False, markup=False)
