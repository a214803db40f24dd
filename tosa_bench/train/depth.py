"""Train the DPT-style depth head (``tosa-bench train depth``) on NYU Depth v2 train (the
795 images of the official split, ``splits.mat`` beside the ``.mat``) or on the generated
``rooms`` set.

The backbone (any variant: dense, ToSA, ...) is frozen unless ``train_backbone``; the
head (:class:`tosa_bench.tasks.depth_model.DepthModel`) learns from the scale-invariant
log loss of Eigen et al. (2014) as BTS and AdaBins use it,
sqrt(mean(d^2) - 0.85 mean(d)^2) with d = log(prediction) - log(ground truth) over the
valid pixels (min < gt < max depth, the evaluation's mask without the Eigen crop), the
prediction upsampled (bilinear) to the ground truth's size. Images are resized to the
input size the evaluation uses (the ground truth's, rounded to the patch size, unless
given) and flipped left-right with probability 1/2 together with their depth.

Distillation (``distill`` = a > 0, for a token-reduced backbone): the dense depth model
with the same starting weights is the teacher and the loss becomes
(1 - a) SILog(prediction, ground truth) + a SILog(prediction, teacher's prediction), the
second term over every pixel (the teacher predicts everywhere).

The result is one depth checkpoint (``backbone.*`` + ``head.*``, the format
``eval --nyu --depth-checkpoint`` and ``sweep --depth-checkpoint`` read).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from tosa_bench.errors import OptionError
from tosa_bench.tasks.metrics import MAX_DEPTH, MIN_DEPTH

#: the variance weight of the scale-invariant loss (BTS / AdaBins use 0.85)
SILOG_LAMBDA = 0.85


def silog_loss(pred: Tensor, gt: Tensor, min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH) -> Tensor:
    """Scale-invariant log loss over the valid pixels of a batch (module docstring):
    ``pred`` and ``gt`` (B, H, W) in metres, the same size."""
    mask = (gt > min_depth) & (gt < max_depth)
    if not bool(mask.any()):
        return pred.sum() * 0.0  # no valid pixel: no signal, but a graph for DDP
    d = torch.log(pred[mask].clamp(min=min_depth)) - torch.log(gt[mask])
    return torch.sqrt((d.pow(2).mean() - SILOG_LAMBDA * d.mean().pow(2)).clamp(min=1e-12))


class DepthStudent(nn.Module):
    """forward(images, depth) -> (SILog loss, {"absrel": mean |p - g| / g on valid pixels});
    with a teacher, the distillation term is added (module docstring)."""

    def __init__(self, model: nn.Module, train_backbone: bool, teacher: nn.Module | None = None, distill: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= distill <= 1.0:
            raise OptionError(f"--distill: expected a weight in [0, 1], got {distill}")
        self.model = model
        self.distill = distill
        self._teacher = (teacher if distill > 0 else None,)  # not a submodule: never trained, never saved
        for p in model.backbone.parameters():
            p.requires_grad_(train_backbone)
        for p in model.head.parameters():
            p.requires_grad_(True)
        self.train_backbone = train_backbone

    def forward(self, images: Tensor, gt: Tensor) -> tuple[Tensor, dict[str, float]]:
        if not self.train_backbone:
            self.model.backbone.eval()  # frozen: also no dropout/statistics updates
        raw = self.model(images).float()
        pred = _to_size(raw, gt.shape[-2:])
        loss = silog_loss(pred, gt)
        teacher = self._teacher[0]
        if teacher is not None:
            with torch.no_grad():
                target = teacher(images).float()
            loss = (1.0 - self.distill) * loss + self.distill * silog_loss(raw, target)
        with torch.no_grad():
            mask = (gt > MIN_DEPTH) & (gt < MAX_DEPTH)
            absrel = float(((pred[mask].clamp(MIN_DEPTH, MAX_DEPTH) - gt[mask]).abs() / gt[mask]).mean()) if mask.any() else math.nan
        return loss, {"absrel": absrel}


def _to_size(pred: Tensor, size: Sequence[int]) -> Tensor:
    """(B, h, w) prediction resized (bilinear) to ``size``."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    return F.interpolate(pred.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


class DepthTask:
    """Depth-head training as a :class:`~tosa_bench.train.loop.Task`."""

    def __init__(self, model: nn.Module, dataset: Dataset, input_size: Sequence[int] | None, train_backbone: bool,
                 meta: dict[str, str], teacher: nn.Module | None = None, distill: float = 0.0) -> None:
        self.model = model
        self.student = DepthStudent(model, train_backbone, teacher, distill)
        self.dataset = dataset
        self.input_size = tuple(input_size) if input_size is not None else None
        self.meta = meta

    def collate(self, items: list[Any]) -> tuple[Tensor, Tensor]:
        return torch.stack([i for i, _ in items]), torch.stack([d for _, d in items])

    def batch_inputs(self, batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[tuple[Any, ...], int]:
        images, gt = batch
        flip = torch.rand(images.shape[0]) < 0.5  # global RNG: seeded and checkpointed by the loop
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        gt = torch.where(flip.view(-1, 1, 1), gt.flip(-1), gt)
        patch = self.model.patch_size
        size = self.input_size or tuple(max(patch, round(s / patch) * patch) for s in gt.shape[-2:])
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return (images.to(device, non_blocking=True), gt.to(device).float()), int(images.shape[0])

    def epoch_metrics(self, sums: dict[str, float], images: int) -> dict[str, float]:
        return {"loss": sums.get("loss", math.nan) / max(images, 1), "train_absrel": sums.get("absrel", math.nan) / max(images, 1)}

    def export(self, out_dir: Path, history: list[dict[str, Any]]) -> Path:
        import os

        from tosa_bench.tasks.depth_model import save_depth_checkpoint

        path = out_dir / "depth.safetensors"
        tmp = out_dir / ".depth.tmp.safetensors"
        save_depth_checkpoint(self.model, tmp)
        os.replace(tmp, path)
        return path
