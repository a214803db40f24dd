"""``tosa-bench train selector`` and ``tosa-bench train classifier``.

The loop is :mod:`tosa_bench.train.loop`; the tasks are :mod:`tosa_bench.train.selector`
and :mod:`tosa_bench.train.classifier`. This module checks the inputs (all of them
before the first step), draws progress and prints the result. Under ``torchrun
--nproc-per-node N --no-python tosa-bench train ...`` every process runs this; only
rank 0 prints and writes.
"""

from __future__ import annotations

import functools
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tosa_bench.cli.common import (CHECKPOINT_HELP, IMPORTANCE_HELP, PLACEMENT_HELP, WORKERS_HELP, Commands, DType, app,
                                   check_output_dir, default_batch_size, default_workers, guarded, out, say)
from tosa_bench.errors import OptionError, RunStateError
from tosa_bench.methods import registry

train_app = Commands(help="Train ToSA's selectors (distilled from the dense model), fine-tune a token-reduced model, "
                          "train the depth head, or a small ViT classifier.\n\n"
                          "With --launcher, the command runs as a (multi-node) submitit job: tosa-bench train --launcher "
                          "slurm --nodes 2 --gpus-per-node 8 selector ...\n\n"
                          "Example: tosa-bench train classifier --data data/shapes --out runs/shapes-vit",
                     no_args_is_help=True)
app.add_typer(train_app, name="train")


#: the launch asked for by ``train --launcher ...`` (set by the group's callback, read by
#: the subcommand it runs next)
_LAUNCH: dict[str, Any] = {"spec": None}


@train_app.callback(invoke_without_command=False)
@guarded
def train_group(
    launcher: Annotated[Optional[str], typer.Option("--launcher", help="slurm or local: submit the training command as a submitit job (DistributedDataParallel over every GPU) and return.")] = None,
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="With --launcher: machines.")] = 1,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", min=0, help="With --launcher: GPUs (one process each) per machine; 0: one CPU process.")] = 1,
    partition: Annotated[Optional[str], typer.Option("--partition", help="With --launcher slurm: the partition.")] = None,
    time_min: Annotated[int, typer.Option("--time", min=1, help="With --launcher: wall-clock limit (minutes); requeued from the last epoch after it.")] = 240,
    slurm_option: Annotated[Optional[list[str]], typer.Option("--slurm-option", help="With --launcher slurm: extra sbatch option KEY=VALUE (repeatable).")] = None,
    tasks_per_node: Annotated[Optional[int], typer.Option("--tasks-per-node", min=1, hidden=True, help="Processes per machine (default: --gpus-per-node, at least 1).")] = None,
) -> None:
    """With --launcher: the subcommand checks its inputs here and is submitted as a job."""
    _LAUNCH["spec"] = None
    if launcher is None:
        return
    from tosa_bench.train.launch import TrainLaunch

    spec = TrainLaunch(launcher, nodes, gpus_per_node, tasks_per_node, partition, time_min, slurm_option or [])
    spec.check()
    _LAUNCH["spec"] = spec  # read by the subcommand (_run), which runs next in this process

# Options every training command shares (one definition each; defaults per command).
Epochs = Annotated[int, typer.Option("--epochs", help="Passes over the data.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Images per step, over all processes (default: 8 on a CPU, 64 on CUDA).")]
LR = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")]
MinLR = Annotated[float, typer.Option("--min-lr", help="Learning rate at the end of the cosine.")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", help="AdamW's decoupled weight decay.")]
WarmupEpochs = Annotated[float, typer.Option("--warmup-epochs", help="Linear warm-up length (epochs).")]
ClipGrad = Annotated[float, typer.Option("--clip-grad", help="Gradient norm limit (0: none).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of everything random: initial weights, data order, augmentation.")]
Dtype = Annotated[DType, typer.Option("--dtype", help="fp32; fp16/bf16 autocast on a GPU.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N] (torchrun or a launcher: cuda:LOCAL_RANK).")]
Workers = Annotated[Optional[int], typer.Option("--workers", help=WORKERS_HELP)]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Train on a subset of N images (class-balanced for ImageFolder, the first N of NYU's train split).")]
OutDir = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default runs/train-<kind>-<time>).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out after its last finished epoch.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an earlier run in --out.")]

#: settings that may differ between a run and its --resume (they do not change the result
#: on one device, or only extend it)
RESUMABLE_CHANGES = {"epochs", "workers", "world_size"}


class Progress:
    """Per-step progress: a rich bar (loss, images/s, time left) on a terminal, one line
    per epoch otherwise (logs); silent on ranks other than 0."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.task = None
        self.t0 = time.perf_counter()
        self.images = 0

    def __enter__(self) -> "Progress":
        if self.enabled and out.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                           TimeRemainingColumn(), console=out)
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.t0, self.images = time.perf_counter(), 0
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"epoch {epoch}/{epochs}", total=steps, info="")

    def advance(self, loss: float, images: int, lr: float) -> None:
        self.images += images
        if self.bar is not None:
            rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=1, info=f"loss {loss:.4f}  {rate:.0f} im/s  lr {lr:.2e}")

    def end_epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        parts = [f"epoch {row['epoch']}"] + [f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "lr", "images", "seconds") and isinstance(v, float)]
        parts.append(f"{row['images'] / max(row['seconds'], 1e-9):.0f} im/s, {row['seconds']:.1f} s")
        (self.bar.console if self.bar is not None else out).print("  ".join(parts), highlight=False, markup=False, soft_wrap=True)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _default_out(kind: str) -> Path:
    return Path("runs") / f"train-{kind}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def _check_resume(out_dir: Path, config: dict[str, Any]) -> None:
    """Refuse a --resume whose settings differ from the stored run (all differences named)."""
    from tosa_bench.train.loop import CONFIG

    path = out_dir / CONFIG
    if not path.is_file():
        raise RunStateError(f"--resume: {out_dir} has no {CONFIG}; it is not a training run")
    stored = json.loads(path.read_text())
    diff = [f"{k}: stored {stored.get(k)!r}, given {v!r}" for k, v in config.items() if k not in RESUMABLE_CHANGES and stored.get(k) != v]
    if diff:
        raise RunStateError(f"--resume {out_dir}: the run was started with other settings ({'; '.join(diff)}); "
                            "resume with the stored ones or start a new --out")


def _common(kind: str, out_dir: Optional[Path], resume: bool, overwrite: bool, device: str, dtype: DType,
            batch_size: Optional[int], workers: Optional[int], **cfg: Any) -> tuple[Any, Path]:
    from tosa_bench.measure.spec import resolve_device
    from tosa_bench.train.loop import TrainConfig

    if device == "auto" and os.environ.get("LOCAL_RANK") and __import__("torch").cuda.is_available():
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # one GPU per process under torchrun / a launcher
    resolved = resolve_device(device)
    config = TrainConfig(device=resolved, dtype=dtype.value, batch_size=default_batch_size(resolved) if batch_size is None else batch_size,
                         workers=default_workers() if workers is None else workers, **cfg)
    config.check()
    if resume and out_dir is None:
        raise OptionError("--resume needs --out DIR (the run to continue)")
    out_dir = out_dir or _default_out(kind)
    check_output_dir(out_dir, "--out")
    return config, out_dir


def _run(kind: str, task_builder, config, out_dir: Path, resume: bool, overwrite: bool, extra: dict[str, Any],
         warning: Optional[str] = None) -> None:
    """Train here, or (``train --launcher ...``) check the inputs here and submit the
    training as a job (:mod:`tosa_bench.train.launch`) that runs :func:`run_training`.
    ``warning`` (e.g. random weights) is printed once the inputs have passed their checks."""
    spec, _LAUNCH["spec"] = _LAUNCH["spec"], None  # taken once: a later command in this process runs here
    if spec is not None:
        from tosa_bench.train.launch import submit_training

        _check(kind, config, out_dir, resume, extra)
        task_builder()  # bad data, weights or options are refused now, not in the job
        if warning:
            say(warning, prefix="warning:", style="yellow")
        job, logs = submit_training(functools.partial(run_training, kind, task_builder, config, out_dir.resolve(),
                                                      overwrite=overwrite, extra=extra), resume, spec, out_dir)
        out.print(f"submitted {spec.launcher} job {job.job_id}: train {kind} on {spec.nodes} node(s) x {spec.tasks} process(es); "
                  f"logs: {logs}; results: {out_dir}", highlight=False, markup=False, soft_wrap=True)
        return
    run_training(kind, task_builder, config, out_dir, resume, overwrite=overwrite, extra=extra, warning=warning)


def _check(kind: str, config: Any, out_dir: Path, resume: bool, extra: dict[str, Any]) -> None:
    from dataclasses import asdict

    if resume:
        _check_resume(out_dir, {k: v for k, v in {"kind": kind, **asdict(config), **extra}.items() if k not in ("device",)})


def run_training(kind: str, task_builder, config, out_dir: Path, resume: bool, *, overwrite: bool, extra: dict[str, Any],
                 warning: Optional[str] = None) -> None:
    """The training itself (every process of a torchrun or launched job runs it)."""
    from tosa_bench.train.loop import prepare_out_dir, train

    _check(kind, config, out_dir, resume, extra)
    task = task_builder()  # model, weights and data are read (and checked) here, before any file is written
    if warning and _is_main():
        say(warning, prefix="warning:", style="yellow")
    if _is_main():
        prepare_out_dir(out_dir, resume=resume, overwrite=overwrite)
    with Progress(_is_main()) as progress:
        result = train(task, config, out_dir, resume=resume, kind=kind, extra_config=extra, progress=progress)
    if _is_main():
        if result.resumed_from:
            out.print(f"resumed after epoch {result.resumed_from}", highlight=False)
        unreadable = getattr(task, "unreadable", 0)
        if unreadable:
            say(f"{unreadable} unreadable images were skipped (counted per epoch)", prefix="note:")
        out.print(f"{kind}: {result.exported} (metrics per epoch: {out_dir / 'metrics.jsonl'}; "
                  f"figures: tosa-bench plot {out_dir})", highlight=False, markup=False, soft_wrap=True)


def _selector_method() -> str:
    """The registered method whose selectors ``train selector`` distils (the one that
    takes ``--selector`` files: ToSA)."""
    takers = registry.selector_takers()
    if len(takers) != 1:
        raise OptionError(f"train selector: expected one method that takes selector weights, found {', '.join(takers) or 'none'}")
    return takers[0]


def _dataset(data: Path, img_size: int, limit: Optional[int], classes: Optional[int]):
    from tosa_bench.data.imagenet import build_imagenet
    from tosa_bench.errors import DatasetError

    ds = build_imagenet(data, img_size=img_size, limit=limit, expected_classes=classes)
    if len(ds) == 0:
        raise DatasetError(f"--data {data}: no images to train on")
    return ds


@train_app.command("selector")
@guarded
def selector_command(
    data: Annotated[Path, typer.Option("--data", help="ImageFolder tree to distil on (ImageNet-train layout; the generated shapes set works).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model config (see `tosa-bench models`).")] = "deit_small_patch16_224",
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help=CHECKPOINT_HELP + " The frozen teacher.")] = None,
    placement: Annotated[str, typer.Option("--placement", help=PLACEMENT_HELP)] = "alternate",
    importance: Annotated[str, typer.Option("--importance", help=IMPORTANCE_HELP)] = "mean",
    keep: Annotated[Optional[list[float]], typer.Option("--keep", "-k", help="Keep ratios at which top-k recall is reported (repeatable; default 0.5).")] = None,
    loss: Annotated[str, typer.Option("--loss", help="kl (KL divergence, default) or mse.")] = "kl",
    epochs: Epochs = 10,
    batch_size: BatchSize = None,
    lr: LR = 1e-3,
    min_lr: MinLR = 1e-6,
    weight_decay: WeightDecay = 0.0,
    warmup_epochs: WarmupEpochs = 1.0,
    clip_grad: ClipGrad = 1.0,
    seed: Seed = 0,
    dtype: Dtype = DType.fp32,
    device: Device = "auto",
    workers: Workers = None,
    img_size: Annotated[Optional[int], typer.Option("--img-size", help="Input side in pixels (default: the model's).")] = None,
    limit: Limit = None,
    out_dir: OutDir = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Distil ToSA's selectors: each learns to predict the next block's attention of the
    frozen dense model. Reports loss and top-k recall (vs chance k/N) every epoch and
    writes OUT/selectors.safetensors (with what it was trained for) for --selector.

    Example: tosa-bench train selector --data data/shapes --model test_tiny --checkpoint runs/shapes-vit/checkpoint.safetensors"""
    from tosa_bench.build import build_model
    from tosa_bench.methods.base import validate_keep
    from tosa_bench.train.selector import LOSSES, SelectorTask

    keeps = tuple(validate_keep(k) for k in (keep or [0.5]))
    if loss not in LOSSES:
        raise OptionError(f"--loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
    config, out_dir = _common("selector", out_dir, resume, overwrite, device, dtype, batch_size, workers, epochs=epochs, lr=lr,
                              min_lr=min_lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, clip_grad=clip_grad,
                              seed=seed, limit=limit)
    extra = {"model": model, "checkpoint": str(checkpoint) if checkpoint else None, "placement": placement,
             "importance": importance, "keeps": list(keeps), "loss": loss, "data": str(data), "img_size": img_size}

    def build() -> SelectorTask:
        import torch

        torch.manual_seed(seed)  # weights not from a file (a random teacher, extra selector channels) follow the seed
        net = build_model(model, _selector_method(), checkpoint=checkpoint, img_size=img_size, keep=keeps[0], placement=placement, importance=importance)
        dataset = _dataset(data, net.cfg.img_size, limit, None)
        meta = {"data": str(data), "loss": loss, "teacher": str(checkpoint) if checkpoint else "random weights"}
        return SelectorTask(net, dataset, keeps, loss, torch.device(config.device), meta)

    _run("selector", build, config, out_dir, resume, overwrite, extra,
         warning=None if checkpoint else "no --checkpoint: the teacher has random weights; the selectors learn its (meaningless) attention")


@train_app.command("classifier")
@guarded
def classifier_command(
    data: Annotated[Path, typer.Option("--data", help="ImageFolder tree to train on (e.g. `tosa-bench data make shapes`).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model config; its class count must match the data's (shapes: test_tiny).")] = "test_tiny",
    min_crop_scale: Annotated[float, typer.Option("--min-crop-scale", min=0.01, max=1.0, help="Smallest area share of the random crop (augmentation).")] = 0.35,
    epochs: Epochs = 30,
    batch_size: BatchSize = None,
    lr: LR = 1e-3,
    min_lr: MinLR = 1e-5,
    weight_decay: WeightDecay = 0.05,
    warmup_epochs: WarmupEpochs = 2.0,
    clip_grad: ClipGrad = 1.0,
    seed: Seed = 0,
    dtype: Dtype = DType.fp32,
    device: Device = "auto",
    workers: Workers = None,
    limit: Limit = None,
    out_dir: OutDir = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Train a ViT classifier from scratch; writes OUT/checkpoint.safetensors for --checkpoint.

    Example: tosa-bench train classifier --data data/shapes --out runs/shapes-vit"""
    from tosa_bench.build import build_model
    from tosa_bench.models.configs import get_config
    from tosa_bench.train.classifier import ClassifierTask, train_transform

    config, out_dir = _common("classifier", out_dir, resume, overwrite, device, dtype, batch_size, workers, epochs=epochs, lr=lr,
                              min_lr=min_lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, clip_grad=clip_grad,
                              seed=seed, limit=limit)
    extra = {"model": model, "data": str(data), "min_crop_scale": min_crop_scale}

    def build() -> ClassifierTask:
        cfg = get_config(model)
        dataset = _dataset(data, cfg.img_size, limit, cfg.num_classes)
        dataset.transform = train_transform(cfg.img_size, min_crop_scale)
        import torch

        torch.manual_seed(seed)  # the initial weights come from the seed too
        net = build_model(model, registry.DENSE).train()
        return ClassifierTask(net, dataset, {"model": model, "data": str(data), "classes": ",".join(dataset.classes)})

    _run("classifier", build, config, out_dir, resume, overwrite, extra)


@train_app.command("finetune")
@guarded
def finetune_command(
    data: Annotated[Path, typer.Option("--data", help="ImageFolder tree to train on (ImageNet-train layout, or shapes).")],
    variant: Annotated[str, typer.Option("--variant", "-v", help="tosa, evit, tome or random (any variant of `tosa-bench models`).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model config (see `tosa-bench models`).")] = "deit_small_patch16_224",
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help=CHECKPOINT_HELP + " The starting weights.")] = None,
    selector: Annotated[Optional[Path], typer.Option("--selector", help="Trained ToSA selectors to start from.")] = None,
    keep: Annotated[Optional[float], typer.Option("--keep", "-k", help="Keep ratio in (0, 1]; meaning per variant: `tosa-bench models`.")] = None,
    placement: Annotated[Optional[str], typer.Option("--placement", help=PLACEMENT_HELP)] = None,
    importance: Annotated[Optional[str], typer.Option("--importance", help=IMPORTANCE_HELP)] = None,
    distill: Annotated[float, typer.Option("--distill", help="Weight a in [0, 1] of the KL to the dense model's logits ((1 - a) CE + a KL; 0: labels only).")] = 0.5,
    epochs: Epochs = 10,
    batch_size: BatchSize = None,
    lr: LR = 1e-4,
    min_lr: MinLR = 1e-6,
    weight_decay: WeightDecay = 0.05,
    warmup_epochs: WarmupEpochs = 1.0,
    clip_grad: ClipGrad = 1.0,
    seed: Seed = 0,
    dtype: Dtype = DType.fp32,
    device: Device = "auto",
    workers: Workers = None,
    limit: Limit = None,
    out_dir: OutDir = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Fine-tune a whole token-reduced classifier (optionally distilled from the dense
    model); writes OUT/checkpoint.safetensors, which --checkpoint loads for the variant.

    Example: tosa-bench train finetune --data data/shapes --model test_tiny --variant evit --keep 0.7 --checkpoint runs/shapes-vit/checkpoint.safetensors"""
    from tosa_bench.build import build_model
    from tosa_bench.cli.common import point_options
    from tosa_bench.models.configs import get_config
    from tosa_bench.train.classifier import ClassifierTask, dense_teacher, train_transform

    if not 0.0 <= distill <= 1.0:
        raise OptionError(f"--distill: expected a weight in [0, 1], got {distill}")
    config, out_dir = _common("finetune", out_dir, resume, overwrite, device, dtype, batch_size, workers, epochs=epochs, lr=lr,
                              min_lr=min_lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, clip_grad=clip_grad,
                              seed=seed, limit=limit)
    options = point_options(variant, keep, get_config(model), placement=placement, importance=importance, seed=seed)
    extra = {"model": model, "variant": variant, "options": options, "checkpoint": str(checkpoint) if checkpoint else None,
             "selector": str(selector) if selector else None, "distill": distill, "data": str(data)}

    def build() -> ClassifierTask:
        import torch

        torch.manual_seed(seed)
        net = build_model(model, variant, checkpoint=checkpoint, selector=selector, **options).train()
        dataset = _dataset(data, net.cfg.img_size, limit, net.cfg.num_classes)
        dataset.transform = train_transform(net.cfg.img_size)
        teacher = dense_teacher(net, torch.device(config.device)) if distill > 0 else None
        meta = {"model": model, "variant": variant, "options": json.dumps(options), "data": str(data), "distill": str(distill),
                "start": str(checkpoint) if checkpoint else "random weights"}
        return ClassifierTask(net, dataset, meta, teacher=teacher, distill=distill)

    _run("finetune", build, config, out_dir, resume, overwrite, extra,
         warning=None if checkpoint else "no --checkpoint: fine-tuning starts from random weights")


@train_app.command("depth")
@guarded
def depth_command(
    nyu: Annotated[Path, typer.Option("--nyu", help="NYU Depth v2 (.mat with splits.mat beside it, or its folder), or a generated rooms set.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model config (see `tosa-bench models`).")] = "deit_small_patch16_224",
    variant: Annotated[str, typer.Option("--variant", "-v", help="Backbone variant (dense, tosa, ...).")] = "dense",
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help=CHECKPOINT_HELP + " The backbone.")] = None,
    selector: Annotated[Optional[Path], typer.Option("--selector", help="Trained ToSA selectors.")] = None,
    keep: Annotated[Optional[float], typer.Option("--keep", "-k", help="Keep ratio in (0, 1]; meaning per variant: `tosa-bench models`.")] = None,
    placement: Annotated[Optional[str], typer.Option("--placement", help=PLACEMENT_HELP)] = None,
    depth_checkpoint: Annotated[Optional[Path], typer.Option("--depth-checkpoint", help="Start from this depth model (backbone.* + head.*), e.g. a dense one to adapt to --variant.")] = None,
    distill: Annotated[float, typer.Option("--distill", help="Weight a in [0, 1] of the dense teacher's depth map ((1 - a) SILog to GT + a SILog to the teacher; needs --depth-checkpoint).")] = 0.0,
    train_backbone: Annotated[bool, typer.Option("--train-backbone/--freeze-backbone", help="Train the backbone too (default: frozen, head only).")] = False,
    features: Annotated[int, typer.Option("--features", min=8, help="DPT fusion width (DPT: 256).")] = 64,
    img_size: Annotated[Optional[str], typer.Option("--img-size", help="Input size HxW (default: the ground truth's, rounded to the patch size).")] = None,
    epochs: Epochs = 20,
    batch_size: BatchSize = None,
    lr: LR = 1e-3,
    min_lr: MinLR = 1e-6,
    weight_decay: WeightDecay = 0.01,
    warmup_epochs: WarmupEpochs = 1.0,
    clip_grad: ClipGrad = 1.0,
    seed: Seed = 0,
    dtype: Dtype = DType.fp32,
    device: Device = "auto",
    workers: Workers = None,
    limit: Limit = None,
    out_dir: OutDir = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Train the DPT-style depth head on NYU train (or rooms); writes OUT/depth.safetensors
    for --depth-checkpoint.

    Example: tosa-bench train depth --nyu data/rooms --model test_tiny --checkpoint runs/shapes-vit/checkpoint.safetensors"""
    from tosa_bench.build import build_model
    from tosa_bench.cli.common import parse_size, point_options
    from tosa_bench.data.nyu import build_nyu
    from tosa_bench.errors import DatasetError
    from tosa_bench.models.configs import get_config
    from tosa_bench.tasks.accuracy import depth_model
    from tosa_bench.tasks.depth_model import DepthModel
    from tosa_bench.train.depth import DepthTask

    size = parse_size(img_size) if img_size is not None else None
    config, out_dir = _common("depth", out_dir, resume, overwrite, device, dtype, batch_size, workers, epochs=epochs, lr=lr,
                              min_lr=min_lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, clip_grad=clip_grad,
                              seed=seed, limit=limit)
    cfg = get_config(model)
    if size is not None and (size[0] % cfg.patch_size or size[1] % cfg.patch_size):
        raise OptionError(f"--img-size {img_size}: height and width must be multiples of the patch size {cfg.patch_size}")
    if not 0.0 <= distill <= 1.0:
        raise OptionError(f"--distill: expected a weight in [0, 1], got {distill}")
    if distill > 0 and depth_checkpoint is None:
        raise OptionError("--distill: the teacher is the dense depth model of --depth-checkpoint; give one")
    options = point_options(variant, keep, cfg, placement=placement, seed=seed)
    extra = {"model": model, "variant": variant, "options": options, "checkpoint": str(checkpoint) if checkpoint else None,
             "depth_checkpoint": str(depth_checkpoint) if depth_checkpoint else None, "distill": distill,
             "selector": str(selector) if selector else None, "train_backbone": train_backbone, "features": features,
             "img_size": list(size) if size else None, "data": str(nyu)}

    def build() -> DepthTask:
        import torch

        dataset = build_nyu(nyu, split="train", limit=limit)
        if len(dataset) == 0:
            raise DatasetError(f"--nyu {nyu}: the train split holds no images")
        torch.manual_seed(seed)
        backbone = build_model(model, variant, checkpoint=checkpoint, selector=selector, **options)
        teacher = None
        if depth_checkpoint is not None:
            net = depth_model(backbone, depth_checkpoint).train()
            if distill > 0:
                teacher = depth_model(build_model(model, registry.DENSE, checkpoint=checkpoint), depth_checkpoint).to(config.device).eval()
                for p in teacher.parameters():
                    p.requires_grad_(False)
        else:
            net = DepthModel(backbone, features=features)
        meta = {"model": model, "variant": variant, "data": str(nyu)}
        return DepthTask(net, dataset, size, train_backbone, meta, teacher=teacher, distill=distill)

    _run("depth", build, config, out_dir, resume, overwrite, extra,
         warning=None if checkpoint or depth_checkpoint else "no --checkpoint: the backbone has random weights")
