"""``tosa-bench plot`` (figures of runs) and ``tosa-bench show-tokens`` (token pictures).

The figures are drawn by :mod:`tosa_bench.results.figures` from the results store alone;
the token pictures by :mod:`tosa_bench.results.tokens` from one forward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tosa_bench.cli.common import (CHECKPOINT_HELP, FUSE_HELP, IMPORTANCE_HELP, PLACEMENT_HELP, SEED_HELP, SELECTOR_HELP,
                                   STUDIED_VARIANT, VARIANT_HELP, app, check_output_dir, guarded, out, point_options, say)
from tosa_bench.errors import OptionError

PLOT_HELP = """Paper-style figures of one or more runs, from their stores alone.

Writes, where the runs have the numbers: accuracy against GMACs and throughput
(tradeoff-<y>-vs-<x>: one line per method, points labelled with keep or r, dense
as a star, the Pareto front dashed); measured speed-up against keep with its
95% interval and the ideal (speedup-vs-keep); tokens per block at one keep;
the selector placements at one keep; peak memory against keep. A training run
directory (with metrics.jsonl) gives its loss and top-k recall curves.

Several runs are overlaid (e.g. two devices or two commits): each method keeps
its colour and marker, the runs differ by line style. Each file carries the
measurement conditions (device, dtype, batch, torch) in a caption line and in
its metadata. Figures a run cannot support are listed with the reason.

Example: tosa-bench plot runs/keeps --format png
"""


def write_report(report, out_dir: Path) -> None:
    """Print what a plot call wrote and skipped (one line each)."""
    stems = list(dict.fromkeys(p.with_suffix("").name for p in report.written))
    exts = ",".join(dict.fromkeys(p.suffix.lstrip(".") for p in report.written))
    if stems:
        out.print(f"figures ({exts}) in {out_dir}: {', '.join(stems)}", highlight=False, markup=False, soft_wrap=True)
    for stem, why in report.skipped:
        say(f"skipped {stem}: {why}", prefix="note:")
    for note in report.notes:
        say(note, prefix="note:")


def list_figures(run_dir: Path) -> None:
    """One line naming the figures in ``RUN_DIR/figures`` (for ``report``), or how to draw them."""
    files = sorted((run_dir / "figures").glob("*.*")) if (run_dir / "figures").is_dir() else []
    stems = list(dict.fromkeys(p.with_suffix("").name for p in files if not p.name.startswith(".")))
    if stems:
        exts = ",".join(dict.fromkeys(p.suffix.lstrip(".") for p in files if not p.name.startswith(".")))
        out.print(f"figures ({exts}) in {run_dir / 'figures'}: {', '.join(stems)}", highlight=False, markup=False, soft_wrap=True)
    else:
        out.print(f"no figures yet: tosa-bench plot {run_dir}", highlight=False, markup=False)


def figures_after_run(run_dir: Path) -> None:
    """The figures of a finished sweep into ``RUN_DIR/figures`` (PDF and PNG), listed in
    one line. A failure to draw costs the figures, never the run: it is reported in one
    line naming the traceback file, and the sweep's exit code stays that of its points."""
    from tosa_bench.cli.common import write_traceback
    from tosa_bench.errors import UserInputError, first_line
    from tosa_bench.results.figures import plot_runs

    target = run_dir / "figures"
    try:
        report = plot_runs([run_dir], target)
    except UserInputError as exc:
        say(f"figures not drawn: {first_line(exc)}", prefix="note:")
        return
    except Exception as exc:  # a plotting bug must not turn a finished sweep into a failure
        import traceback

        where = write_traceback(traceback.format_exc())
        say(f"figures not drawn (a bug in tosa-bench: {type(exc).__name__}: {first_line(exc)}"
            + (f"; traceback in {where}" if where else "") + f"); draw them later with: tosa-bench plot {run_dir}",
            prefix="warning:", style="yellow")
        return
    write_report(report, target)


@app.command("plot", help=PLOT_HELP)
@guarded
def plot_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (sweep runs, or one training run).")],
    x: Annotated[Optional[str], typer.Option("--x", help="Cost axes of the trade-off figures: gmacs, throughput, latency, peak_mem, energy (comma-separated; default gmacs,throughput, plus energy where measured).")] = None,
    y: Annotated[Optional[str], typer.Option("--y", help="Accuracy axes: top1, top5, delta1, absrel, rmse (comma-separated; default: what the runs measured).")] = None,
    keep: Annotated[Optional[float], typer.Option("--keep", help="Keep of the per-keep figures (tokens per block, placements); default: the run's keep closest to 0.5.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="pdf, png, svg (comma-separated).")] = "pdf,png",
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where the figures go (default RUN_DIR/figures for one run; required for several).")] = None,
    aggregate: Annotated[bool, typer.Option("--aggregate", help="The runs are seeds of one configuration: draw their means with ± sample-sd error bars instead of overlaying them.")] = False,
) -> None:
    from tosa_bench.results.figures import X_AXES, Y_AXES, is_training_run, parse_choices, parse_formats, plot_runs, plot_training

    formats = parse_formats(fmt)
    xs, ys = parse_choices(x, X_AXES, "--x"), parse_choices(y, Y_AXES, "--y")
    if out_dir is None:
        if len(run_dirs) > 1:
            raise OptionError("plot: several runs are overlaid into one set of figures; say where with --out DIR")
        out_dir = run_dirs[0] / "figures"
    check_output_dir(out_dir, "--out")
    training = [p for p in run_dirs if is_training_run(p)]
    if training:
        if len(run_dirs) > 1:
            raise OptionError(f"plot: {training[0]} is a training run; plot it on its own")
        write_report(plot_training(run_dirs[0], out_dir, formats), out_dir)
        return
    write_report(plot_runs(run_dirs, out_dir, x=xs, y=ys, keep=keep, formats=formats, aggregate=aggregate), out_dir)


@app.command("show-tokens")
@guarded
def show_tokens_command(
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, ...).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model config (see `tosa-bench models`).")] = "deit_small_patch16_224",
    variant: Annotated[str, typer.Option("--variant", "-v", help=VARIANT_HELP)] = STUDIED_VARIANT,
    keep: Annotated[Optional[float], typer.Option("--keep", "-k", help="Keep ratio in (0, 1]; what it means per variant: `tosa-bench models`.")] = None,
    placement: Annotated[Optional[str], typer.Option("--placement", help=PLACEMENT_HELP)] = None,
    tome_r: Annotated[Optional[int], typer.Option("--tome-r", help="ToMe tokens merged per block (overrides the keep mapping).")] = None,
    evit_loc: Annotated[Optional[str], typer.Option("--evit-loc", help="EViT pruning blocks, 0-based, e.g. 3,6,9.")] = None,
    fuse: Annotated[bool, typer.Option("--fuse/--no-fuse", help=FUSE_HELP)] = True,
    seed: Annotated[int, typer.Option("--seed", help=SEED_HELP)] = 0,
    importance: Annotated[Optional[str], typer.Option("--importance", help=IMPORTANCE_HELP)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help=CHECKPOINT_HELP)] = None,
    selector: Annotated[Optional[Path], typer.Option("--selector", help=SELECTOR_HELP)] = None,
    img_size: Annotated[Optional[int], typer.Option("--img-size", help="Input side in pixels (default: the model's).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="png, pdf, svg (comma-separated).")] = "png,pdf",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where the pictures go.")] = Path("runs/tokens"),
) -> None:
    """For each image, a grid over the blocks: which patches ran the block (ToSA, random),
    were kept (EViT) or were merged together (ToMe, one colour per group), over the image.

    Example: tosa-bench show-tokens data/shapes/val/n00000000/shape_000000.JPEG --model test_tiny --keep 0.5"""
    from tosa_bench.models.configs import get_config
    from tosa_bench.results.figures import parse_formats
    from tosa_bench.results.tokens import token_pictures

    formats = parse_formats(fmt)
    check_output_dir(out_dir, "--out")
    cfg = get_config(model).with_overrides(img_size=img_size)
    options = point_options(variant, keep, cfg, placement=placement, tome_r=tome_r, evit_loc=evit_loc, fuse=fuse,
                            seed=seed, importance=importance)
    written = token_pictures(images, model, variant, options, out_dir, checkpoint=checkpoint, selector=selector,
                             img_size=img_size, formats=formats)
    if checkpoint is None:
        say("no --checkpoint: random weights, so the selection shows the mechanism, not what a trained model picks", prefix="note:")
    out.print(f"token pictures in {out_dir}: " + ", ".join(p.name for p in written), highlight=False, markup=False, soft_wrap=True)
