"""``tosa-bench eval imagenet|nyu``: accuracy of one model/variant on a dataset."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from tosa_bench.cli.common import DType, VARIANT_HELP, app, guarded, out, point_options, say
from tosa_bench.errors import OptionError


class Task(str, Enum):
    imagenet = "imagenet"
    nyu = "nyu"


@app.command("eval")
@guarded
def eval_command(
    task: Annotated[Task, typer.Argument(help="imagenet: top-1/top-5 on an ImageFolder val set; nyu: depth metrics on the NYU v2 test split.")],
    data: Annotated[Path, typer.Option(help="imagenet: DIR/<wnid>/*.JPEG (or DIR/val/...); nyu: nyu_depth_v2_labeled.mat (+ splits.mat beside it), its folder, or a BTS-style folder/list file.")],
    model: Annotated[str, typer.Option(help="Model config (see `tosa-bench models`).")] = "deit_small_patch16_224",
    variant: Annotated[str, typer.Option(help=VARIANT_HELP)] = "dense",
    keep: Annotated[Optional[float], typer.Option(help="Keep ratio in (0, 1]; what it means per variant: `tosa-bench models`.")] = None,
    placement: Annotated[Optional[str], typer.Option(help="ToSA/random selector blocks.")] = None,
    tome_r: Annotated[Optional[int], typer.Option("--tome-r", help="ToMe r per block.")] = None,
    evit_loc: Annotated[Optional[str], typer.Option("--evit-loc", help="EViT pruning blocks, 0-based.")] = None,
    fuse: Annotated[bool, typer.Option("--fuse/--no-fuse", help="EViT: fuse dropped tokens.")] = True,
    checkpoint: Annotated[Optional[Path], typer.Option(help="imagenet: timm/DeiT classifier weights; nyu: depth model weights (backbone.* + head.*).")] = None,
    selector: Annotated[Optional[Path], typer.Option(help="Trained ToSA selector weights.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate a deterministic subset (class-balanced for imagenet).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    dtype: Annotated[DType, typer.Option()] = DType.fp32,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers.")] = 4,
    crop_pct: Annotated[float, typer.Option("--crop-pct", help="imagenet: centre-crop ratio (DeiT 0.875; timm DeiT configs 0.9).")] = 0.875,
    input_size: Annotated[Optional[str], typer.Option("--input-size", help="nyu: model input HxW, e.g. 480x640 (default: ground-truth size).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as one JSON object.")] = False,
) -> None:
    """Accuracy of one model (top1/top5 in %, or delta1..3, absrel, sqrel, rmse, rmse_log,
    log10, silog). Without a checkpoint it runs with random weights and says so."""
    from tosa_bench.build import build_model
    from tosa_bench.measure.spec import resolve_device
    from tosa_bench.models.configs import get_config
    from tosa_bench.tasks.accuracy import depth_model, imagenet_accuracy, nyu_accuracy
    from tosa_bench.precision import resolve_autocast

    dev = resolve_device(device)
    resolve_autocast(dtype.value, dev)
    options = point_options(variant, keep, get_config(model), placement=placement, tome_r=tome_r, evit_loc=evit_loc, fuse=fuse)
    weights = str(checkpoint) if checkpoint else "none: random weights, numbers are not meaningful"
    if task is Task.imagenet:
        net = build_model(model, variant, checkpoint=checkpoint, selector=selector, **options)
        result = imagenet_accuracy(net, data, device=dev, dtype=dtype.value, batch_size=batch_size, limit=limit, workers=workers, crop_pct=crop_pct, progress=not as_json)
    else:
        size = _parse_hw(input_size)
        backbone = build_model(model, variant, selector=selector, num_classes=0, img_size=None, **options)
        net = depth_model(backbone, checkpoint)
        result = nyu_accuracy(net, data, device=dev, dtype=dtype.value, batch_size=min(batch_size, 8), limit=limit, workers=workers, input_size=size, progress=not as_json)
    record = {"task": task.value, "model": model, "variant": variant, "options": options, "weights": weights, **result}
    if checkpoint is None:
        say("no --checkpoint: evaluated with random weights", prefix="warning:", style="yellow")
    if as_json:
        print(json.dumps(record, default=str))
        return
    from rich.table import Table

    t = Table(title=f"{task.value}: {model} / {variant} {options}", caption=f"weights: {weights}; {dev}, {dtype.value}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in result.items():
        if isinstance(v, (int, float)):
            t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(t)


def _parse_hw(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        h, w = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise OptionError(f"--input-size: expected HxW like 480x640, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise OptionError(f"--input-size: height and width must be > 0 (e.g. 480x640), got {text!r}")
    return h, w
