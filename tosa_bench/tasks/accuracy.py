"""Accuracy of one built model on a dataset path: the glue shared by ``tosa-bench eval``
and the sweep's accuracy columns (dataset building + evaluation loop + weight loading)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import nn

from tosa_bench.data.imagenet import build_imagenet, collate_skip_bad
from tosa_bench.data.nyu import build_nyu
from tosa_bench.tasks.depth_model import DepthModel, load_depth_checkpoint
from tosa_bench.tasks.evaluate import evaluate_classification, evaluate_depth


def imagenet_accuracy(
    model: nn.Module,
    data_dir: str | Path,
    *,
    device: str,
    dtype: str = "fp32",
    batch_size: int = 64,
    limit: int | None = None,
    workers: int = 0,
    crop_pct: float = 0.875,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5 (percent) of a classifier on an ImageFolder val set (DeiT transform at
    the model's input size). The folder's class count must equal the model's head."""
    dataset = build_imagenet(data_dir, img_size=model.cfg.img_size, crop_pct=crop_pct, limit=limit, expected_classes=model.cfg.num_classes)
    result = evaluate_classification(model, dataset, batch_size, device, dtype, num_workers=workers, collate_fn=collate_skip_bad, progress=progress)
    result["n_unreadable"] = max(int(result.get("n_unreadable", 0)), dataset.num_unreadable)
    result["unreadable_files"] = [str(p) for p in dataset.unreadable][:20]
    return result


def depth_model(backbone: nn.Module, checkpoint: str | Path | None = None, features: int = 256) -> DepthModel:
    """DPT-style depth model on ``backbone``; ``checkpoint`` holds ``backbone.*`` and
    ``head.*`` tensors (``.pth`` tensors-only or ``.safetensors``)."""
    model = DepthModel(backbone, features=features)
    if checkpoint is not None:
        load_depth_checkpoint(model, checkpoint)
    return model.eval()


def nyu_accuracy(
    model: nn.Module,
    data_path: str | Path,
    *,
    device: str,
    dtype: str = "fp32",
    batch_size: int = 4,
    limit: int | None = None,
    workers: int = 0,
    input_size: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """NYU Depth v2 test-split metrics (reference protocol) of a depth model."""
    dataset = build_nyu(data_path, split="test", limit=limit)
    size = tuple(input_size) if input_size is not None else None
    return evaluate_depth(model, dataset, batch_size, device, dtype, input_size=size, num_workers=workers, progress=progress)
