"""Classification training: a (small) ViT from scratch (``tosa-bench train classifier``),
for the demo and for anyone without pretrained weights, and fine-tuning of a whole
token-reduced model (``tosa-bench train finetune``: every parameter, ToSA's selectors
included, optionally distilled from the dense model's logits).

Images come from an ImageFolder tree (ImageNet-train layout, or the generated
``shapes`` set) with the usual light augmentation: random resized crop (area share
``--min-crop-scale``..1, default 0.35, bicubic) and horizontal flip, then the ImageNet normalisation the evaluation uses. The
loss is cross-entropy with label smoothing 0.1. The result is a safetensors checkpoint
with timm's parameter names, loadable with ``--checkpoint`` by every command.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from tosa_bench.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, Batch, collate_skip_bad
from tosa_bench.errors import OptionError

LABEL_SMOOTHING = 0.1


def train_transform(img_size: int, min_scale: float = 0.35):
    """Random resized crop (area share ``min_scale``..1) + flip + normalisation (float32
    [3, S, S]). Objects that fill a few per cent of the image (the generated shapes) need a
    high ``min_scale``, or the crop often cuts them out and the label turns to noise."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=(min_scale, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
    ])


class ClassifierStudent(nn.Module):
    """The whole model is trained: forward(images, labels) -> (loss, {"top1": %}).

    With a ``teacher`` and ``distill`` = a > 0 (fine-tuning a token-reduced model) the loss
    is (1 - a) CE + a KL(teacher || student) on the softmax of the logits, temperature 1,
    as in DeiT's soft distillation; the teacher is the dense model with the starting
    weights, held outside the module tree (never trained, never saved)."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None = None, distill: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= distill <= 1.0:
            raise OptionError(f"--distill: expected a weight in [0, 1], got {distill}")
        self.model = model
        self.distill = distill
        self._teacher = (teacher if distill > 0 else None,)
        for p in model.parameters():
            p.requires_grad_(True)

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = self.model(images).float()
        loss = F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING)
        metrics = {"top1": float((logits.argmax(dim=1) == labels).float().mean()) * 100.0}
        teacher = self._teacher[0]
        if teacher is not None:
            with torch.no_grad():
                target = F.log_softmax(teacher(images).float(), dim=-1)
            kl = F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean", log_target=True)
            loss = (1.0 - self.distill) * loss + self.distill * kl
            metrics["kl"] = float(kl.detach())
        return loss, metrics


def dense_teacher(model: nn.Module, device: torch.device) -> nn.Module:
    """A frozen dense copy of ``model`` (same backbone weights): the distillation teacher."""
    from tosa_bench.build import build_model

    from tosa_bench.methods.registry import DENSE

    twin = build_model(model.name, DENSE, num_classes=model.cfg.num_classes, img_size=model.cfg.img_size)
    twin.load_state_dict({k: v.clone() for k, v in model.state_dict().items() if not k.startswith("reducer.")}, strict=False)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin.to(device).eval()


class ClassifierTask:
    """Classifier training (from scratch, or fine-tuning a token-reduced model) as a
    :class:`~tosa_bench.train.loop.Task`."""

    def __init__(self, model: nn.Module, dataset: Dataset, meta: dict[str, str], teacher: nn.Module | None = None,
                 distill: float = 0.0) -> None:
        self.model = model
        self.student = ClassifierStudent(model, teacher, distill)
        self.dataset = dataset
        self.meta = meta

    def collate(self, items: list[Any]) -> Batch:
        return collate_skip_bad(items)

    def batch_inputs(self, batch: Batch, device: torch.device) -> tuple[tuple[Any, ...], int]:
        if batch.images.ndim != 4:
            return (), 0
        return (batch.images.to(device, non_blocking=True), batch.labels.to(device)), int(batch.images.shape[0])

    def epoch_metrics(self, sums: dict[str, float], images: int) -> dict[str, float]:
        out = {"loss": sums.get("loss", math.nan) / max(images, 1), "train_top1": sums.get("top1", math.nan) / max(images, 1)}
        if "kl" in sums:
            out["kl"] = sums["kl"] / max(images, 1)
        return out

    def export(self, out_dir: Path, history: list[dict[str, Any]]) -> Path:
        from tosa_bench.models.checkpoint import write_safetensors

        last = history[-1] if history else {}
        meta = {**self.meta, "epochs": len(history), "final_loss": f"{last.get('loss', math.nan):.6g}",
                "train_top1": f"{last.get('train_top1', math.nan):.2f}"}
        # backbone and the method's own weights (ToSA selectors): what --checkpoint loads
        return write_safetensors(out_dir / "checkpoint.safetensors", self.model.state_dict(), meta)
