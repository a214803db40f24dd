"""The one training loop: selector distillation and classifier training (and later the
fine-tuning and depth tasks) are a :class:`Task` each; this module does everything
else the same way for all of them.

- AdamW; the learning rate follows a linear warm-up then a cosine decay, set from the
  global step on every step (:func:`lr_at`), so resuming needs no scheduler state.
- Gradient clipping by global norm (``clip_grad``, 0 = off); autocast (fp16/bf16) on a
  GPU only, with a gradient scaler for fp16; fp32 on a CPU.
- Seeded: the data order of epoch ``e`` comes from ``(seed, e)`` alone
  (``DistributedSampler.set_epoch``, also with one process), and the RNG states are in
  the checkpoint, so a run on a CPU is deterministic.
- ``env.json`` records the environment (torch, device, CPU, git commit) as a sweep's does.
- After every epoch, one line is appended to ``metrics.jsonl`` (``epoch``, ``loss``,
  the task's metrics, ``lr``, ``images``, ``seconds``), and ``last.pt`` is written
  atomically (temporary file, fsync, rename): trainable weights, optimizer, epoch, step
  and RNG states, read back with ``torch.load(weights_only=True)``. ``resume`` continues
  after the last finished epoch; a run killed at any moment (SIGKILL included) and
  resumed ends with the weights of a run never stopped (CPU, same seed): the epoch in
  flight is redone from the same state with the same data order.
- More than one process (``torchrun``): DistributedDataParallel over the task's
  trainable module, a distributed sampler, gradients averaged across processes; only
  rank 0 writes files and prints. The loss each process computes is a mean over its own
  images, so N processes on B/N images each step like one process on B.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from tosa_bench.errors import OptionError, RunStateError
from tosa_bench.results.store import write_atomic

CHECKPOINT = "last.pt"
METRICS = "metrics.jsonl"
CONFIG = "train.json"
#: the environment record (torch, device, CPU, git commit), as sweeps write it
ENV = "env.json"


@dataclass
class TrainConfig:
    """Settings every task shares (units: learning rates per step, epochs, images)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    clip_grad: float = 1.0
    seed: int = 0
    dtype: str = "fp32"
    device: str = "cpu"
    workers: int = 0
    limit: int | None = None

    def check(self) -> None:
        """OptionError for settings that cannot train (before any work)."""
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise OptionError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "warmup_epochs", "clip_grad"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise OptionError(f"--{name.replace('_', '-')}: expected a finite number >= 0, got {v}")
        if self.lr <= 0:
            raise OptionError(f"--lr: expected a learning rate > 0, got {self.lr}")
        if self.min_lr > self.lr:
            raise OptionError(f"--min-lr {self.min_lr} is above --lr {self.lr}")
        if self.workers < 0:
            raise OptionError(f"--workers: expected >= 0, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"--limit: expected an integer >= 1, got {self.limit}")


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float = 0.0) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up from lr/warmup to lr over
    ``warmup_steps`` steps, then a half cosine from lr down to ``min_lr`` at the last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Task(Protocol):
    """What a training task provides to :func:`train`."""

    #: the module whose parameters are trained (wrapped in DDP when distributed); its
    #: forward takes a batch's images (and labels) and returns (loss, metrics dict)
    student: nn.Module
    dataset: Dataset

    def collate(self, items: list[Any]) -> Any: ...

    def batch_inputs(self, batch: Any, device: torch.device) -> tuple[tuple[Any, ...], int]:
        """(arguments of ``student``'s forward, number of images) of one batch."""

    def epoch_metrics(self, sums: dict[str, float], images: int) -> dict[str, float]:
        """The epoch's metrics from the summed per-batch metrics (weighted by images)."""

    def export(self, out_dir: Path, history: list[dict[str, Any]]) -> Path:
        """Write the result (weights file with metadata); returns its path."""


@dataclass
class Distributed:
    """Where this process stands in a ``torchrun`` job (world 1: a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_from_env(device: str) -> Distributed:
    """Join the process group ``torchrun`` set up (RANK/WORLD_SIZE in the environment):
    gloo on a CPU, nccl on CUDA; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Distributed(rank, world, local)


@dataclass
class TrainResult:
    """What :func:`train` did: the exported file, the per-epoch history, and whether the
    run resumed from a checkpoint."""

    exported: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # a directory fsync is best effort (some filesystems refuse it)
        pass


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: say which, do not unpickle anything
        raise RunStateError(f"{path}: not a readable training checkpoint ({type(exc).__name__}); "
                            "start again without --resume, or into a new --out") from None


def read_history(out_dir: Path) -> list[dict[str, Any]]:
    """The epochs recorded in ``metrics.jsonl`` (a torn last line skipped)."""
    path = out_dir / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _rewrite_history(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(out_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def _append_metrics(out_dir: Path, row: dict[str, Any]) -> None:
    with open(out_dir / METRICS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def train(task: Task, cfg: TrainConfig, out_dir: Path, *, resume: bool = False, kind: str = "train",
          extra_config: dict[str, Any] | None = None, progress: Any = None) -> TrainResult:
    """Train ``task`` for ``cfg.epochs`` epochs into ``out_dir`` (module docstring)."""
    from tosa_bench.data.loader import make_loader
    from tosa_bench.precision import resolve_autocast

    cfg.check()
    device = torch.device(cfg.device)
    amp = resolve_autocast(cfg.dtype, device) if device.type == "cuda" else None
    if cfg.dtype != "fp32" and device.type != "cuda":
        raise OptionError(f"--dtype {cfg.dtype}: mixed precision training runs on a GPU only; use fp32 on a CPU")
    ddp = distributed_from_env(cfg.device)
    if ddp.world > 1 and cfg.batch_size % ddp.world:
        raise OptionError(f"--batch-size {cfg.batch_size} does not split over {ddp.world} processes; use a multiple of {ddp.world}")
    per_rank = cfg.batch_size // ddp.world
    torch.manual_seed(cfg.seed)
    student = task.student.to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise OptionError(f"{kind}: nothing to train (no trainable parameters)")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)

    start_epoch, step = 0, 0
    ckpt_path = out_dir / CHECKPOINT
    if resume:
        if not ckpt_path.is_file():
            raise RunStateError(f"{out_dir}: no {CHECKPOINT} to resume from (no epoch finished yet); start without --resume")
        state = _load_checkpoint(ckpt_path)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        torch.set_rng_state(state["rng_cpu"])
        if ddp.main:  # epochs after the checkpoint's (recorded, then killed) are redone
            _rewrite_history(out_dir, [r for r in read_history(out_dir) if int(r.get("epoch", 0)) <= start_epoch])
    elif ddp.main:
        (out_dir / METRICS).unlink(missing_ok=True)
    if ddp.main:
        from tosa_bench.measure.env import environment_record

        write_atomic(out_dir / ENV, json.dumps(environment_record(device=device), indent=1, default=str) + "\n")
        write_atomic(out_dir / CONFIG, json.dumps({"kind": kind, **asdict(cfg), **(extra_config or {}), "world_size": ddp.world}, indent=1) + "\n")

    model: nn.Module = student
    if ddp.world > 1:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(task.dataset, num_replicas=ddp.world, rank=ddp.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = make_loader(task.dataset, per_rank, num_workers=cfg.workers, collate_fn=task.collate, sampler=sampler,
                         drop_last=True, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise OptionError(f"{kind}: {len(task.dataset)} images make no batch of {cfg.batch_size}; lower --batch-size")
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    history = read_history(out_dir) if resume and ddp.main else []

    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        images, t0 = 0, time.perf_counter()
        if progress is not None:
            progress.start_epoch(epoch + 1, cfg.epochs, steps_per_epoch)
        for batch in loader:
            lr = lr_at(step, total, warmup, cfg.lr, cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            args, n = task.batch_inputs(batch, device)
            if n == 0:
                continue
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss, metrics = model(*args)
            if not torch.isfinite(loss):
                raise RunStateError(f"{kind}: the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                    "lower --lr, or use --dtype fp32 / bf16")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            images += n
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            if progress is not None:
                progress.advance(float(loss.detach()), n * ddp.world, lr)
        seconds = time.perf_counter() - t0
        totals = _reduce_sums(sums, images, ddp)
        row = {"epoch": epoch + 1, **task.epoch_metrics(totals, int(totals.get("_images", images))), "lr": lr,
               "images": int(totals.get("_images", images)), "seconds": round(seconds, 3)}
        if ddp.main:
            # metrics first: killed between the two, the resume redoes this epoch and drops
            # its line (recorded epochs after the checkpoint's are rewritten away)
            _append_metrics(out_dir, row)
            _save_checkpoint(ckpt_path, {"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                                         "epoch": epoch + 1, "step": step, "rng_cpu": torch.get_rng_state()})
            history.append(row)
            if progress is not None:
                progress.end_epoch(row)
        if ddp.world > 1:
            dist.barrier()
    exported = task.export(out_dir, history) if ddp.main else None
    if ddp.world > 1:
        dist.barrier()
    return TrainResult(exported, history, start_epoch)


def _reduce_sums(sums: dict[str, float], images: int, ddp: Distributed) -> dict[str, float]:
    """Per-epoch sums over every process (and the image count under ``_images``)."""
    if ddp.world == 1:
        return {**sums, "_images": float(images)}
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(images)], dtype=torch.float64)
    dist.all_reduce(t)
    out = dict(zip(keys, t[:-1].tolist()))
    out["_images"] = float(t[-1])
    return out


def prepare_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """A fresh (or empty) output directory, or the one to resume; an existing run is
    refused unless ``resume`` or ``overwrite`` says what to do with it."""
    import shutil

    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"--out {out_dir}: is a file, expected a directory")
    if resume:
        if not out_dir.is_dir():
            raise RunStateError(f"--resume: {out_dir} does not exist; start without --resume")
        return
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise RunStateError(f"--out {out_dir}: already holds a run; continue it with --resume, or replace it with --overwrite")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
