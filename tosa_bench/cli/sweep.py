"""``tosa-bench sweep``, ``tosa-bench report`` and ``tosa-bench merge``.

The logic lives in :mod:`tosa_bench.sweep` and :mod:`tosa_bench.results`; this module
only maps options onto a suite, draws progress and prints tables.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from tosa_bench.cli.common import (COMPILE_HELP, COMPILE_MODE_HELP, DType, VARIANT_HELP, app, check_output_file, compile_modes, deprecated_alias, err,
                                   guarded, out, output_file, say)
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

Results go to runs/<run-id>/ (or --out DIR, a new or empty directory;
--overwrite replaces an earlier run there): records.jsonl (one line per
point, fsync'd), env.json, suite.toml (the resolved grid), table.md,
table.csv and figures/ (PDF and PNG; `tosa-bench plot` redraws them).
One process writes a run at a time (a second one is refused).

--resume DIR continues a run: the same command plus --resume DIR measures
what is not ok yet (options that would change the stored grid or settings
are refused); --imagenet or --nyu added to a finished run measures the
accuracy it lacks. --dry-run --resume DIR lists what would be measured.
--shard i/n runs 1/n of the grid (by sorted config hash); `tosa-bench
merge` joins shards.

Exit code 0: every point ok; 1: some points recorded as error or oom, or
an internal error (a bug: its traceback file is named; --debug prints it);
2: bad input (nothing measured); 130 on Ctrl-C, 143 on SIGTERM (finished
points are kept: continue with --resume).

Example: tosa-bench sweep --variant dense --variant tosa --keep 0.25 --keep 0.5 --out runs/keeps
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
        self.current = f"{p.model} {p.variant} {_short(p.options)} b{p.batch_size} {p.dtype} {p.device}" + (f" compiled {p.compile}" if p.compile else "")
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
    fuse: Optional[bool] = typer.Option(None, "--fuse/--no-fuse", help="EViT: fuse the dropped tokens into one (--no-fuse drops them)."),
    compile: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
    compile_mode: Optional[list[str]] = typer.Option(None, "--compile-mode", help=COMPILE_MODE_HELP),
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
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<run-id>): new or empty, unless --resume or --overwrite."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Where default run directories go (default: runs/ in the current directory)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue RUN_DIR: measure the points not ok yet (and accuracy added by --imagenet/--nyu)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the earlier run in --out DIR."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Run shard i of n (e.g. 2/3) of the grid."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be measured and exit (nothing measured, nothing written)."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw the run's figures into RUN_DIR/figures at the end (a few seconds; `tosa-bench plot` draws them later)."),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="slurm or local: submit the grid as --jobs shards through submitit and return (`tosa-bench status DIR` follows them)."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="With --launcher: shards (jobs of the array)."),
    partition: Optional[str] = typer.Option(None, "--partition", help="With --launcher slurm: the partition."),
    gpus_per_job: int = typer.Option(1, "--gpus-per-job", min=0, help="With --launcher: GPUs per shard."),
    time_min: int = typer.Option(240, "--time", min=1, help="With --launcher: wall-clock limit per shard (minutes); requeued after it."),
    slurm_option: Optional[list[str]] = typer.Option(None, "--slurm-option", help="With --launcher slurm: extra sbatch option KEY=VALUE (repeatable), e.g. account=proj."),
) -> None:
    from tosa_bench.sweep.interrupt import Stopped, stop_on_signals

    overrides = dict(
        models=_tuple(model), variants=_tuple(variant), keeps=_tuple(keep), placements=_tuple(placement),
        tome_r=_tuple(tome_r), evit_locations=_tuple(evit_loc), batch_size=_tuple(batch_size), dtypes=_tuple(dtype),
        devices=_tuple(device), img_size=img_size, match=match.value if match else None, seed=seed, importance=importance, fuse=fuse,
        compile=compile_modes(compile, compile_mode),
        checkpoint=weights_table(checkpoint, "--checkpoint"), selector=weights_table(selector, "--selector"),
        depth_checkpoint=weights_table(depth_checkpoint, "--depth-checkpoint"),
        imagenet=str(imagenet) if imagenet else None, nyu=str(nyu) if nyu else None, limit=limit,
        eval_batch_size=eval_batch_size, num_workers=workers, warmup=warmup, repeats=repeats,
        time_budget_s=time_budget, timing=timing, latency=latency, memory=memory,
    )
    if resume is not None and launcher is None:
        from tosa_bench.sweep.launch import is_launch_dir

        if is_launch_dir(resume):  # a launched sweep: its shards' states, merged when done
            from tosa_bench.cli.launch import show_status

            show_status(resume)
            return
    if launcher is not None:
        from tosa_bench.cli.launch import submit
        from tosa_bench.cluster import parse_slurm_options
        from tosa_bench.sweep.launch import LaunchSpec
        from tosa_bench.sweep.suite import Suite, load_suite

        given = [name for name, v in (("--resume", resume), ("--shard", shard), ("--overwrite", overwrite or None), ("--dry-run", dry_run or None)) if v]
        if given:
            raise OptionError(f"--launcher: not with {', '.join(given)} (a launch makes its own shards; follow it with tosa-bench status DIR)")
        spec = LaunchSpec(launcher, jobs, partition, gpus_per_job, None, time_min, parse_slurm_options(slurm_option))
        spec.check()
        base = load_suite(suite) if suite is not None else Suite()
        submit(base.with_overrides(**overrides), out_dir, spec)
        return
    with stop_on_signals():
        try:
            plan = _plan_sweep(suite, out_dir, runs_dir, resume, overwrite, shard, dry_run, overrides)
        except Stopped as stop:  # before the first point: nothing was recorded
            say(f"{_stopped_word(stop)} before anything was measured")
            raise typer.Exit(stop.exit_code) from None
        if plan is not None:
            _run(plan, figures=figures)


def _stopped_word(stop: Any) -> str:
    """'interrupted' (Ctrl-C) or 'terminated (SIGTERM)'."""
    return "interrupted" if getattr(stop, "name", "SIGINT") == "SIGINT" else f"terminated ({stop.name})"


def _plan_sweep(suite: Optional[Path], out_dir: Optional[Path], runs_dir: Optional[Path], resume: Optional[Path],
                overwrite: bool, shard: Optional[str], dry_run: bool, overrides: dict[str, Any]) -> Any:
    """The checked plan of a new or resumed sweep; None after a dry run (printed)."""
    from tosa_bench.sweep.grid import expand, parse_shard, select_shard
    from tosa_bench.sweep.session import RUNS_ROOT, check_out_dir, plan_new
    from tosa_bench.sweep.suite import Suite, load_suite

    if resume is not None:
        return _plan_resume(suite, out_dir, resume, overwrite, shard, dry_run, overrides)
    if overwrite and out_dir is None:
        raise OptionError("--overwrite: give the run directory to replace with --out DIR (a default run directory is always new)")
    base = load_suite(suite) if suite is not None else Suite()
    resolved = base.with_overrides(**overrides)
    shard_spec = parse_shard(shard)
    if dry_run:
        if out_dir is not None:
            check_out_dir(out_dir, overwrite)  # say now that --out would be refused
        _print_grid(select_shard(expand(resolved), shard_spec), resolved)
        return None
    return plan_new(resolved, out_dir, shard_spec, runs_dir or RUNS_ROOT, overwrite=overwrite)


def _plan_resume(suite: Optional[Path], out_dir: Optional[Path], resume: Path, overwrite: bool, shard: Optional[str],
                 dry_run: bool, overrides: dict[str, Any]) -> Any:
    """--resume: the command's options reconciled with the stored run (:mod:`tosa_bench.sweep.resume`).
    With ``--out`` naming the same directory and no run there yet, the run is started: so
    one command line (e.g. a Slurm job that may be requeued) both starts and continues."""
    from tosa_bench.results.store import RunStore
    from tosa_bench.sweep.grid import expand, parse_shard, select_shard
    from tosa_bench.sweep.resume import reconcile
    from tosa_bench.sweep.session import is_run_dir, plan_new, plan_resume, read_resolved
    from tosa_bench.sweep.suite import Suite, load_suite

    if overwrite:
        raise OptionError(f"--overwrite: not with --resume (--resume continues the run in {resume}, --overwrite would replace it)")
    same_out = out_dir is not None and out_dir.expanduser().resolve() == resume.expanduser().resolve()
    if same_out and not (resume.is_dir() and is_run_dir(resume)):
        resolved = (load_suite(suite) if suite is not None else Suite()).with_overrides(**overrides)
        if dry_run:
            _print_grid(select_shard(expand(resolved), parse_shard(shard)), resolved)
            return None
        say(f"note: {resume} holds no run yet; starting it")
        return plan_new(resolved, out_dir, parse_shard(shard))
    store = RunStore.existing(resume)
    stored, grid, stored_shard, _ = read_resolved(store)
    given = (load_suite(suite) if suite is not None else stored).with_overrides(**overrides)
    spec = parse_shard(shard)
    others = [("--shard", _shard_text(stored_shard), _shard_text(spec) if spec else None),
              ("--out", str(store.path.resolve()), str(out_dir.expanduser().resolve()) if out_dir is not None else None)]
    resumed = reconcile(stored, given, resume, others, grid)
    if dry_run:
        _print_pending(store, grid, stored_shard, resumed)
        return None
    return plan_resume(resume, suite=resumed)


def _shard_text(shard: Optional[tuple[int, int]]) -> Optional[str]:
    return f"{shard[0]}/{shard[1]}" if shard else None


def _print_pending(store: Any, grid: list, shard: Optional[tuple[int, int]], suite: Any) -> None:
    """What ``--resume`` would do now (a dry run: reads only, takes no lock)."""
    from tosa_bench.sweep import lock
    from tosa_bench.sweep.grid import select_shard
    from tosa_bench.sweep.resume import lacks_accuracy, pending

    points = select_shard(grid, shard)
    todo = pending(points, store, lacks_accuracy(suite))
    n_acc = sum(prev is not None for _, prev in todo)
    busy = lock.holder(store.path)
    if busy is not None:
        say(f"note: {store.path} is being written now ({lock.describe(busy)}); a resume would be refused until it ends")
    extra = f", {n_acc} of them ok points that lack their accuracy" if n_acc else ""
    out.print(f"resume {store.path}: {len(todo)} of {len(points)} points to measure{extra}; "
              f"{len(points) - len(todo)} already ok (dry run: nothing measured)", highlight=False, markup=False, soft_wrap=True)
    if todo:
        _print_grid([gp for gp, _ in todo], suite, title=f"would measure {len(todo)} points of {store.path.name}")


def _print_grid(points: list, suite: Any, title: Optional[str] = None) -> None:
    """The resolved grid, one row per point; columns with one value for every point go
    into the title, and no cell is cut (words wrap, numbers never split)."""
    from rich.table import Table

    from tosa_bench.measure.analytic import analytic_gmacs
    from tosa_bench.measure.spec import EAGER
    from tosa_bench.results.tables import _model_name

    heads = ("hash", "model", "variant", "options", "keeps", "batch", "dtype", "device", "compile", "GMACs")
    rows = []
    for gp in points:
        p = gp.point
        g = analytic_gmacs(p.model, p.variant, p.options, p.img_size)
        rows.append((gp.hash, _model_name(p.model), p.variant, _short(p.options), ",".join(map(str, gp.keeps)) or "-",
                     str(p.batch_size), p.dtype, p.device, p.compile or EAGER, f"{g:.3f}"))
    constant = {i for i in (1, 5, 6, 7, 8) if len({r[i] for r in rows}) == 1 and rows}
    shown = [i for i in range(len(heads)) if i not in constant]
    common = ", ".join(f"{heads[i]} {rows[0][i]}" for i in sorted(constant))
    t = Table(title=(title or f"grid of {suite.name}: {len(points)} points (nothing measured)") + (f"; {common}" if common else ""),
              caption="GMACs per image from the closed-form formula (no forward pass)")
    for i in shown:
        longest_word = max([len(w) for r in rows for w in r[i].split()] + [len(w) for w in heads[i].split()])
        t.add_column(heads[i], overflow="fold", min_width=longest_word, no_wrap=i in (0, 4, 5, 9))
    for r in rows:
        t.add_row(*[r[i] for i in shown])
    _print_wide(t)


def _run(plan: Any, figures: bool = True) -> None:
    """Measure a planned sweep (:func:`run_plan`); exit 1 when a point is not ok."""
    summary = run_plan(plan, figures=figures)
    failed = {k: v for k, v in summary.status.items() if k != "ok"}
    if failed:
        say("points not ok: " + ", ".join(f"{v} {k}" for k, v in failed.items()) + " (see status/error in records.jsonl)")
        raise typer.Exit(1)


def run_plan(plan: Any, figures: bool = True) -> Any:
    """Measure the points of ``plan`` with a progress bar, rewrite the tables, print the
    table; returns the runner's summary. Ctrl-C exits 130 and SIGTERM 143, both with the
    resume hint (:mod:`tosa_bench.sweep.interrupt`): the point in flight is dropped, every
    finished one is in the store."""
    from tosa_bench.results import load_run
    from tosa_bench.results.tables import render
    from tosa_bench.sweep.interrupt import stop_on_signals
    from tosa_bench.sweep.session import measure_plan

    store = plan.store
    shard = f" (shard {plan.shard[0]}/{plan.shard[1]} of {len(plan.grid)})" if plan.shard else ""
    out.print(f"{'resuming' if plan.resumed else 'sweep'} {plan.run_id}: {len(plan.points)} points{shard} -> {store.path}",
              highlight=False, markup=False)
    try:
        with stop_on_signals():
            with _Bar(len(plan.points)) as bar:
                summary = measure_plan(plan, progress=bar)
    except KeyboardInterrupt as stop:
        say(f"{_stopped_word(stop)}: finished points are in {store.path}; continue with: tosa-bench sweep --resume {store.path}")
        raise typer.Exit(getattr(stop, "exit_code", 130)) from None
    if summary.skipped:
        out.print(f"{summary.skipped} point{'s' if summary.skipped != 1 else ''} already ok, skipped", highlight=False)
    if summary.accuracy_added:
        out.print(f"{summary.accuracy_added} ok point{'s' if summary.accuracy_added != 1 else ''}: accuracy added", highlight=False)
    run = load_run(store.path)
    if run.records:
        _print_wide(render(run, "table"))
        if figures:
            from tosa_bench.cli.plot import figures_after_run

            figures_after_run(store.path)
    out.print(f"results: {store.path}", highlight=False, markup=False)
    return summary


def _print_wide(renderable: Any) -> None:
    """Print at the width of the output: the terminal's, else ``COLUMNS`` when set (a
    pipe or a log whose reader says how wide), else 160 columns (a log file, read in a
    wide window). The sweep table lays itself out for that width (no line is longer)."""
    from rich.console import Console

    Console(file=sys.stdout, width=output_width(), soft_wrap=False).print(renderable)


def output_width() -> int:
    """Columns to print tables at (see :func:`_print_wide`)."""
    if out.is_terminal:
        return out.width
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    return columns if columns > 0 else 160


@app.command("report")
@guarded
def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="A sweep run directory (runs/<run-id>); several: seeds of one configuration, reported as mean ± sample sd (n)."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table (fits the terminal; every column in md/csv), md, latex or csv."),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout (a table at 160 columns)."),
    old_output: Optional[Path] = typer.Option(None, "--output", hidden=True, help="Deprecated name of --out."),
) -> None:
    """The comparison tables of a run again, from its store alone. Several runs of one
    configuration (seeds) are reported together: every metric as mean ± sample standard
    deviation (n runs).

    Example: tosa-bench report runs/keeps --format md"""
    from tosa_bench.results import load_run
    from tosa_bench.results.aggregate import aggregate_runs
    from tosa_bench.results.tables import render

    output = deprecated_alias(output, old_output, "--out", "--output")
    if output is not None:
        check_output_file(output, "--out")  # before reading the run
    runs = [load_run(d) for d in run_dirs]
    for run in runs:
        if run.torn_tail:
            say(f"note: the last line of {run.path}/records.jsonl is incomplete (a killed run) and was skipped")
        if run.bad_lines:
            say(f"note: unreadable lines {run.bad_lines[:5]} of {run.path}/records.jsonl were skipped")
    run = runs[0] if len(runs) == 1 else aggregate_runs(runs)
    result = render(run, fmt.value)
    if fmt is Format.table:
        if output is not None:
            from rich.console import Console

            with output_file(output, "--out") as fh:
                Console(file=fh, width=160).print(result)
        else:
            _print_wide(result)
            from tosa_bench.cli.plot import list_figures

            list_figures(run.path)
        return
    if output is not None:
        with output_file(output, "--out") as fh:
            fh.write(result)
    else:
        typer.echo(result, nl=False)


@app.command("merge")
@guarded
def merge_command(
    runs: list[Path] = typer.Argument(..., help="Run directories to join (e.g. the shards of one sweep)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="New (or empty) run directory for the merged run."),
) -> None:
    """Join shard outputs into one run; refuses one configuration with two different results.

    Example: tosa-bench merge runs/shard-1 runs/shard-2 --out runs/merged"""
    from tosa_bench.sweep.merge import merge_runs

    summary = merge_runs(runs, out_dir)
    out.print(f"merged {len(runs)} runs: {summary.records} of {summary.grid} grid points -> {out_dir}", highlight=False, markup=False)
    if summary.missing:
        err.print(f"note: {len(summary.missing)} grid points have no record (e.g. {summary.missing[0]}); "
                  "run the missing shard or --resume it, then merge again", highlight=False, markup=False)
