"""``tosa-bench eval --imagenet DIR | --nyu PATH``: accuracy of one model/variant.

The old spelling ``eval imagenet|nyu --data PATH`` still works (``--data`` is hidden
and says it is deprecated); the task follows from the dataset option, as in ``sweep``.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tosa_bench.cli.common import (BATCH_HELP, CHECKPOINT_HELP, DEPTH_CHECKPOINT_HELP, FUSE_HELP, IMPORTANCE_HELP, PLACEMENT_HELP,
                                   SEED_HELP, SELECTOR_HELP, VARIANT_HELP, WORKERS_HELP, DType, app, check_output_file,
                                   default_batch_size, default_workers, deprecated_alias, guarded, json_safe, note_later, out, output_file,
                                   parse_size, point_options, say)
from tosa_bench.errors import OptionError

#: what the record says about accuracy measured without trained weights
RANDOM_REASON = "random weights: the numbers are not a result"


class Task(str, Enum):
    imagenet = "imagenet"
    nyu = "nyu"


@app.command("eval")
@guarded
def eval_command(
    task: Annotated[Optional[Task], typer.Argument(help="Optional, old spelling: imagenet or nyu (the dataset option says it).", show_default=False)] = None,
    imagenet: Annotated[Optional[Path], typer.Option("--imagenet", help="ImageNet-val folder DIR/<wnid>/*.JPEG (or DIR/val/...): top-1/top-5.")] = None,
    nyu: Annotated[Optional[Path], typer.Option("--nyu", help="NYU Depth v2: nyu_depth_v2_labeled.mat (+ splits.mat beside it), its folder, or a BTS-style folder/list file: depth metrics.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", hidden=True, help="Deprecated: use --imagenet or --nyu.")] = None,
    model: Annotated[str, typer.Option(help="Model config (see `tosa-bench models`).")] = "deit_small_patch16_224",
    variant: Annotated[str, typer.Option(help=VARIANT_HELP)] = "dense",
    keep: Annotated[Optional[float], typer.Option(help="Keep ratio in (0, 1]; what it means per variant: `tosa-bench models`.")] = None,
    placement: Annotated[Optional[str], typer.Option(help=PLACEMENT_HELP)] = None,
    tome_r: Annotated[Optional[int], typer.Option("--tome-r", help="ToMe r per block.")] = None,
    evit_loc: Annotated[Optional[str], typer.Option("--evit-loc", help="EViT pruning blocks, 0-based.")] = None,
    fuse: Annotated[bool, typer.Option("--fuse/--no-fuse", help=FUSE_HELP)] = True,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    importance: Annotated[Optional[str], typer.Option(help=IMPORTANCE_HELP)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help=CHECKPOINT_HELP)] = None,
    depth_checkpoint: Annotated[Optional[Path], typer.Option("--depth-checkpoint", help=DEPTH_CHECKPOINT_HELP + " With --nyu.")] = None,
    selector: Annotated[Optional[Path], typer.Option(help=SELECTOR_HELP)] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate a deterministic subset (class-balanced for ImageNet).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help=BATCH_HELP)] = None,
    dtype: Annotated[DType, typer.Option(help="fp32, or fp16/bf16 autocast (fp16 needs CUDA).")] = DType.fp32,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    workers: Annotated[Optional[int], typer.Option(min=0, help=WORKERS_HELP)] = None,
    crop_pct: Annotated[float, typer.Option("--crop-pct", help="ImageNet: centre-crop ratio (DeiT 0.875; timm DeiT configs 0.9).")] = 0.875,
    img_size: Annotated[Optional[str], typer.Option("--img-size", help="Model input in pixels: N for --imagenet (default: the model's); N or HxW for --nyu (default: the ground-truth size).")] = None,
    input_size: Annotated[Optional[str], typer.Option("--input-size", hidden=True, help="Deprecated: use --img-size.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as one JSON object.")] = False,
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the JSON record to this file.")] = None,
) -> None:
    """Accuracy of one model (top1/top5 in %, or delta1..3, absrel, sqrel, rmse, rmse_log,
    log10, silog). Without trained weights it still runs, and says the numbers are not a
    result; a metric that cannot be computed (NaN predictions) is null, with the reason.

    Example: tosa-bench eval --imagenet data/shapes --model test_tiny --variant tosa --keep 0.5"""
    import torch

    from tosa_bench.measure.fit import check_fits
    from tosa_bench.measure.spec import resolve_device
    from tosa_bench.models.configs import get_config
    from tosa_bench.precision import resolve_autocast

    which, path = _task(task, imagenet, nyu, data)
    size_text = deprecated_alias(img_size, input_size, "--img-size", "--input-size")
    if out_file is not None:
        check_output_file(out_file, "--out")
    if which is Task.imagenet and depth_checkpoint is not None:
        raise OptionError("--depth-checkpoint: depth weights apply to --nyu, not --imagenet")
    size = parse_size(size_text, "--img-size", square=which is Task.imagenet) if size_text is not None else None
    dev = resolve_device(device)
    resolve_autocast(dtype.value, dev)
    batch = batch_size or default_batch_size(dev)
    n_workers = default_workers() if workers is None else workers
    cfg = get_config(model, size[0] if which is Task.imagenet and size else None)
    fit_hw = size or ((cfg.img_size, cfg.img_size) if which is Task.imagenet else (480, 640))
    check_fits(model, fit_hw[0], fit_hw[1], batch, dtype.value, dev)
    options = point_options(variant, keep, cfg, placement=placement, tome_r=tome_r, evit_loc=evit_loc, fuse=fuse, seed=seed,
                            importance=importance)
    try:
        if which is Task.imagenet:
            result, weights, reason = _imagenet(model, variant, options, path, checkpoint, selector, size, dev, dtype.value, batch,
                                                limit, n_workers, crop_pct, as_json)
        else:
            result, weights, reason = _nyu(model, variant, options, path, checkpoint, depth_checkpoint, selector, size, dev,
                                           dtype.value, batch, limit, n_workers, as_json)
    except torch.OutOfMemoryError:
        raise OptionError(f"--batch-size {batch}: out of memory on {dev}; use a smaller --batch-size or --img-size") from None
    record = {"task": which.value, "model": model, "variant": variant, "options": options, "weights": weights,
              "meaningful": reason is None and result.get("reason") is None, "accuracy_reason": reason, **result}
    text = json.dumps(json_safe(record), default=str, allow_nan=False)
    if out_file is not None:
        with output_file(out_file, "--out") as fh:
            fh.write(text + "\n")
    _notes(record)
    if as_json:
        print(text)
    else:
        _print_table(which, model, variant, options, record, dev, dtype.value)
    if _all_missing(record):
        say(f"{which.value}: no metric could be computed: {record.get('reason')}", prefix="error:", style="bold red")
        raise typer.Exit(1)


def _task(task: Optional[Task], imagenet: Optional[Path], nyu: Optional[Path], data: Optional[Path]) -> tuple[Task, Path]:
    """The task and its dataset path from the options (``--imagenet`` or ``--nyu``; the
    old ``TASK --data PATH`` with a note)."""
    if imagenet is not None and nyu is not None:
        raise OptionError("eval: give one of --imagenet DIR and --nyu PATH (run eval once per dataset)")
    given = Task.imagenet if imagenet is not None else Task.nyu if nyu is not None else None
    if data is not None:
        if given is not None:
            raise OptionError(f"--data is the old name of --{given.value}; give only --{given.value}")
        if task is None:
            raise OptionError("--data: deprecated; use --imagenet DIR or --nyu PATH")
        note_later(f"--data is deprecated; use --{task.value} {data}")
        return task, data
    if given is None:
        raise OptionError("eval: give --imagenet DIR (top-1/top-5) or --nyu PATH (depth metrics)")
    if task is not None and task is not given:
        raise OptionError(f"eval {task.value}: the dataset given is --{given.value}; drop the word {task.value!r} or give --{task.value}")
    return given, imagenet if given is Task.imagenet else nyu  # type: ignore[return-value]


def _imagenet(model, variant, options, path, checkpoint, selector, size, dev, dtype, batch, limit, workers, crop_pct, quiet):
    from tosa_bench.build import build_model
    from tosa_bench.tasks.accuracy import imagenet_accuracy

    net = build_model(model, variant, checkpoint=checkpoint, selector=selector, img_size=size[0] if size else None, **options)
    result = imagenet_accuracy(net, path, device=dev, dtype=dtype, batch_size=batch, limit=limit, workers=workers,
                               crop_pct=crop_pct, progress=not quiet)
    reason = None if checkpoint is not None else f"no --checkpoint: {RANDOM_REASON}"
    return result, str(checkpoint) if checkpoint else "random", reason


def _nyu(model, variant, options, path, checkpoint, depth_checkpoint, selector, size, dev, dtype, batch, limit, workers, quiet):
    """Depth metrics; the depth weights come from --depth-checkpoint (or, the old way, a
    --checkpoint that holds a DPT head), the backbone's from --checkpoint otherwise."""
    from tosa_bench.build import build_model
    from tosa_bench.errors import CheckpointError
    from tosa_bench.tasks.accuracy import depth_model_for, nyu_accuracy, read_depth_weights
    from tosa_bench.tasks.depth_model import DepthModel

    depth = read_depth_weights(str(depth_checkpoint)) if depth_checkpoint is not None else None
    if checkpoint is not None and depth is None:
        try:
            depth = read_depth_weights(str(checkpoint))
        except CheckpointError:
            depth = None  # backbone weights only: the depth head stays random
        else:
            note_later("a depth model given as --checkpoint: use --depth-checkpoint for it")
            checkpoint = None
    elif checkpoint is not None:
        raise OptionError("--checkpoint: a depth checkpoint holds its own backbone weights; give only --depth-checkpoint")
    backbone = build_model(model, variant, checkpoint=checkpoint, selector=selector, **options)
    net = depth_model_for(backbone, depth) if depth is not None else DepthModel(backbone).eval()
    result = nyu_accuracy(net, path, device=dev, dtype=dtype, batch_size=batch, limit=limit, workers=workers, input_size=size,
                          progress=not quiet)
    reason = None if depth is not None else f"no --depth-checkpoint: random depth head, {RANDOM_REASON}"
    return result, depth.path if depth is not None else "random", reason


def _all_missing(record: dict[str, Any]) -> bool:
    metrics = [record.get(k) for k in ("top1", "delta1", "absrel", "rmse") if k in record]
    return bool(metrics) and all(v is None for v in metrics)


def _notes(record: dict[str, Any]) -> None:
    """Warnings about what the numbers do not cover, one line each on stderr."""
    if record.get("accuracy_reason"):
        say(record["accuracy_reason"], prefix="warning:", style="yellow")
    if record.get("n_unreadable"):
        say(f"{record['n_unreadable']} image(s) could not be decoded and were skipped (unreadable_files in --json)", prefix="warning:", style="yellow")
    if record.get("n_empty_classes"):
        say(f"{record['n_empty_classes']} class folder(s) hold no image: {', '.join(record['empty_classes'][:5])}", prefix="warning:", style="yellow")
    if record.get("reason"):
        say(record["reason"], prefix="warning:", style="yellow")


def _print_table(which: Task, model: str, variant: str, options: dict, record: dict[str, Any], dev: str, dtype: str) -> None:
    from rich.table import Table

    flagged = not record["meaningful"]
    t = Table(title=f"{which.value}: {model} / {variant} {options}",
              caption=f"weights: {record['weights']}; {dev}, {dtype}" + (f"\nNOT A RESULT: {record['accuracy_reason']}" if flagged else ""))
    t.add_column("metric")
    t.add_column("value (random weights: not a result)" if flagged else "value", justify="right")
    for k, v in record.items():
        if k in ("meaningful",) or isinstance(v, bool):
            continue
        if isinstance(v, float):
            t.add_row(k, f"({v:.4f})" if flagged else f"{v:.4f}")
        elif isinstance(v, int):
            t.add_row(k, str(v))
        elif v is None and k not in ("accuracy_reason", "reason"):
            t.add_row(k, "n/m")
    out.print(t)
