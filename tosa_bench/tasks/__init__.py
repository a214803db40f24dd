"""Downstream tasks: accuracy metrics, the DPT depth model and the evaluation loops.

Accuracy only; timing lives in ``tosa_bench.measure``.
"""

from __future__ import annotations

from tosa_bench.tasks.depth_model import (
    DepthModel,
    DPTHead,
    default_hooks,
    load_depth_checkpoint,
    save_depth_checkpoint,
)
from tosa_bench.tasks.evaluate import evaluate_classification, evaluate_depth, resolve_autocast
from tosa_bench.tasks.metrics import (
    DEPTH_METRIC_NAMES,
    ClassificationAccumulator,
    DepthAccumulator,
    depth_valid_mask,
    per_image_depth_metrics,
    topk_correct,
)

__all__ = [
    "DEPTH_METRIC_NAMES",
    "ClassificationAccumulator",
    "DepthAccumulator",
    "DepthModel",
    "DPTHead",
    "default_hooks",
    "depth_valid_mask",
    "evaluate_classification",
    "evaluate_depth",
    "load_depth_checkpoint",
    "per_image_depth_metrics",
    "resolve_autocast",
    "save_depth_checkpoint",
    "topk_correct",
]
