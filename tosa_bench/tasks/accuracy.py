"""Accuracy of one built model on a dataset path: the glue shared by ``tosa-bench eval``
and the sweep's accuracy columns (dataset building + evaluation loop + weight loading)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from tosa_bench.data.imagenet import build_imagenet, collate_skip_bad
from tosa_bench.data.nyu import build_nyu
from tosa_bench.tasks.depth_model import DepthModel
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
    the model's input size). The folder's class count must equal the model's head.
    Besides the metrics: ``n_unreadable`` / ``unreadable_files`` (images that could not
    be decoded, skipped) and ``n_empty_classes`` / ``empty_classes`` (class folders
    without images), the first 20 of each listed."""
    dataset = build_imagenet(data_dir, img_size=model.cfg.img_size, crop_pct=crop_pct, limit=limit, expected_classes=model.cfg.num_classes)
    result = evaluate_classification(model, dataset, batch_size, device, dtype, num_workers=workers, collate_fn=collate_skip_bad, progress=progress)
    result["n_unreadable"] = max(int(result.get("n_unreadable", 0)), dataset.num_unreadable)
    result["unreadable_files"] = [str(p) for p in dataset.unreadable][:20]
    result["n_empty_classes"] = len(dataset.empty_classes)
    result["empty_classes"] = dataset.empty_classes[:20]
    return result


DEPTH_ALLOWED_PREFIX = "backbone.reducer."  # method weights: not required in a depth checkpoint
#: the backbone's classifier: no part of a depth model. A depth checkpoint may hold it or
#: not (one saved from a backbone built with or without its head); it is never loaded.
CLASSIFIER_PREFIX = "backbone.head."


def depth_core(state: dict[str, Any]) -> dict[str, Any]:
    """The entries of a depth state dict that every depth checkpoint must match: all but
    method weights (``backbone.reducer.``) and the unused classifier (``backbone.head.``).
    This is the one depth checkpoint format that ``eval --nyu`` and ``sweep --nyu`` read."""
    return {k: v for k, v in state.items() if not k.startswith((DEPTH_ALLOWED_PREFIX, CLASSIFIER_PREFIX))}


@dataclass
class DepthWeights:
    """A validated depth checkpoint: its state dict and the DPT head shape read from it."""

    path: str
    state: dict[str, Any]
    features: int
    stage_channels: tuple[int, ...]
    head_channels: int


def depth_model_for(backbone: Any, weights: DepthWeights) -> Any:
    """A DepthModel around ``backbone`` with the checkpoint's head and backbone weights.

    The method's own weights (``backbone.reducer.*``: ToSA selectors) need not be in the
    checkpoint: a depth model trained densely runs every variant, the selectors keeping
    what the backbone was built with (``--selector`` weights or their initialisation).
    Checkpoint entries for another variant's method weights are ignored, and so is the
    backbone's classifier (``backbone.head.*``, present or not: a depth model never uses
    it). Anything else missing, unexpected or of another shape raises ``CheckpointError``.
    """
    from tosa_bench.models.checkpoint import check_fit
    from tosa_bench.tasks.depth_model import DepthModel

    model = DepthModel(backbone, features=weights.features, stage_channels=list(weights.stage_channels),
                       head_channels=weights.head_channels)
    own = model.state_dict()
    core_own, core_state = depth_core(own), depth_core(weights.state)
    check_fit(core_own, core_state, f"depth checkpoint {weights.path} does not fit {getattr(backbone, 'name', 'the model')}")
    method = {k: v for k, v in weights.state.items() if k in own and k.startswith(DEPTH_ALLOWED_PREFIX) and v.shape == own[k].shape}
    model.load_state_dict({**core_state, **method}, strict=False)
    return model.eval()


def read_depth_weights(path: str) -> DepthWeights:
    """Read a depth checkpoint and the head shape it implies; CheckpointError if it holds
    no DPT head."""
    from tosa_bench.errors import CheckpointError
    from tosa_bench.models.checkpoint import read_state_dict

    state = read_state_dict(path)
    try:
        features = int(state["head.reassemble.0.to_features.weight"].shape[0])
        stages = tuple(int(state[f"head.reassemble.{i}.project.weight"].shape[0]) for i in range(4))
        head_channels = int(state["head.output.0.weight"].shape[0])
    except KeyError as err:
        raise CheckpointError(f"depth checkpoint {path}: no DPT depth head in it (missing {err.args[0]})") from None
    return DepthWeights(path, state, features, stages, head_channels)


def depth_model(backbone: nn.Module, checkpoint: str | Path | None = None) -> DepthModel:
    """DPT-style depth model on ``backbone``: with ``checkpoint``, the head shape and all
    weights come from it (:func:`read_depth_weights`, :func:`depth_model_for`); without,
    a default head with random weights."""
    if checkpoint is None:
        return DepthModel(backbone).eval()
    return depth_model_for(backbone, read_depth_weights(str(checkpoint)))


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
