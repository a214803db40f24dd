"""Accuracy metrics: ImageNet top-k and the NYU Depth V2 depth metrics.

Classification counts are exact integers; percentages (0-100) are formed only at the end,
so accumulating over batches loses nothing.

Depth follows the BTS/AdaBins/DPT evaluation protocol (shared/reference §5):

* predictions are clamped to ``[min_depth, max_depth]`` = [1e-3, 10] metres;
* a pixel is valid when ``min_depth < gt < max_depth`` (strict on both sides) and, for a
  480x640 map, when it lies inside the Eigen crop rows 45:471, cols 41:601 (Python slice
  convention: end excluded, i.e. 426 x 560 pixels);
* every metric is computed per image over its valid pixels, then averaged over images
  (not over pixels), so each test image weighs the same whatever its valid area.

All depth values are in metres; ``rmse`` is in metres, ``sqrel`` in metres (squared error
divided by depth), ``absrel``/``delta*``/``rmse_log``/``log10`` are unitless, ``silog`` is
100 x a log-space standard deviation (unitless). Per-image sums are formed in float64 so
the 654-image mean does not depend on the batch size.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "DEPTH_METRIC_NAMES",
    "EIGEN_CROP",
    "NYU_GT_SHAPE",
    "MIN_DEPTH",
    "MAX_DEPTH",
    "topk_correct",
    "ClassificationAccumulator",
    "depth_valid_mask",
    "per_image_depth_metrics",
    "DepthAccumulator",
]

#: Names of the depth metrics, in the order papers usually print them.
DEPTH_METRIC_NAMES: tuple[str, ...] = (
    "delta1", "delta2", "delta3", "absrel", "sqrel", "rmse", "rmse_log", "log10", "silog",
)
#: Eigen crop of a 480x640 NYU map: (row_start, row_end, col_start, col_end), ends excluded.
EIGEN_CROP: tuple[int, int, int, int] = (45, 471, 41, 601)
#: Ground-truth resolution (rows, cols) at which the Eigen crop is defined.
NYU_GT_SHAPE: tuple[int, int] = (480, 640)
#: Evaluation depth range in metres (clamp for predictions, strict bounds for valid GT).
MIN_DEPTH: float = 1e-3
MAX_DEPTH: float = 10.0


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------
def topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the k highest logits, for each k in ``ks``.

    Args:
        logits: (B, C) class scores (any float dtype; ties broken by ``torch.topk``).
        labels: (B,) integer class indices in [0, C).
        ks: the k values; a k larger than C is treated as C (so "top-5" of a 4-class
            problem is top-4, i.e. always correct). The returned dict is keyed by the
            requested k, not the clipped one.

    Returns:
        ``{k: count}`` with plain Python ints (counts, not percentages).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    labels = labels.reshape(-1).to(logits.device)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits rows but {labels.shape[0]} labels")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {tuple(ks)}")
    num_classes = logits.shape[1]
    if logits.shape[0] == 0:
        return {int(k): 0 for k in ks}
    kmax = min(max(int(k) for k in ks), num_classes)
    top = logits.topk(kmax, dim=1).indices  # (B, kmax), best first
    hit = top.eq(labels.long().unsqueeze(1))  # (B, kmax), at most one True per row
    cum = hit.cumsum(dim=1).clamp_(max=1)  # cum[:, j] = label within the best j+1
    return {int(k): int(cum[:, min(int(k), num_classes) - 1].sum().item()) for k in ks}


class ClassificationAccumulator:
    """Running top-1/top-5 over batches.

    ``compute()`` returns ``top1`` and ``top5`` as **percentages in [0, 100]** plus the
    exact integer counts ``n_images``, ``correct_top1``, ``correct_top5``. With fewer than
    five classes ``top5`` means top-min(5, C) (see :func:`topk_correct`).
    """

    def __init__(self) -> None:
        self.n_images = 0
        self.correct = {1: 0, 5: 0}

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add one batch of (B, C) logits and (B,) labels."""
        counts = topk_correct(logits, labels, ks=(1, 5))
        self.correct[1] += counts[1]
        self.correct[5] += counts[5]
        self.n_images += int(logits.shape[0])

    def compute(self) -> dict[str, float | int]:
        """Percentages (0-100; NaN when no image was seen) and counts."""
        n = self.n_images
        pct = (lambda c: 100.0 * c / n) if n else (lambda c: math.nan)
        return {
            "top1": pct(self.correct[1]),
            "top5": pct(self.correct[5]),
            "n_images": n,
            "correct_top1": self.correct[1],
            "correct_top5": self.correct[5],
        }


# --------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------
def _use_eigen_crop(shape: tuple[int, int], eigen_crop: bool | None) -> bool:
    """Resolve ``eigen_crop``: None = auto (crop exactly when the map is 480x640)."""
    if eigen_crop is None:
        return tuple(shape) == NYU_GT_SHAPE
    if eigen_crop and tuple(shape) != NYU_GT_SHAPE:
        raise ValueError(
            f"eigen_crop=True needs {NYU_GT_SHAPE[0]}x{NYU_GT_SHAPE[1]} ground truth (the crop is "
            f"defined in those pixels), got {shape[0]}x{shape[1]}; evaluate at GT resolution"
        )
    return bool(eigen_crop)


def depth_valid_mask(
    gt: Tensor,
    eigen_crop: bool | None = None,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
) -> Tensor:
    """Boolean mask of evaluated pixels, same shape as ``gt`` ((H, W) or (B, H, W), metres).

    Valid = ``min_depth < gt < max_depth`` (strict; NaN ground truth is invalid) and, if the
    Eigen crop applies, inside rows 45:471 and cols 41:601. ``eigen_crop``: None = apply
    only when the map is 480x640 (the NYU GT resolution the crop is defined for); True =
    require it (ValueError on another size); False = never.
    """
    if gt.ndim not in (2, 3):
        raise ValueError(f"gt must be (H, W) or (B, H, W), got shape {tuple(gt.shape)}")
    mask = (gt > min_depth) & (gt < max_depth)
    if _use_eigen_crop(tuple(gt.shape[-2:]), eigen_crop):
        r0, r1, c0, c1 = EIGEN_CROP
        crop = torch.zeros(gt.shape[-2:], dtype=torch.bool, device=gt.device)
        crop[r0:r1, c0:c1] = True
        mask = mask & crop
    return mask


def per_image_depth_metrics(
    pred: Tensor,
    gt: Tensor,
    eigen_crop: bool | None = None,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
) -> tuple[dict[str, Tensor], Tensor]:
    """Depth metrics of each image of a batch.

    Args:
        pred: (B, H, W) or (H, W) predicted depth in metres at GT resolution. Clamped to
            [min_depth, max_depth] here (NaN predictions stay NaN and poison the metric,
            on purpose: a broken model should not look good).
        gt: same shape, ground-truth depth in metres; invalid pixels may hold anything.
        eigen_crop: see :func:`depth_valid_mask`.

    Returns:
        ``(metrics, n_valid)``: ``metrics[name]`` is a float64 (B,) tensor (NaN for an
        image without valid pixels) and ``n_valid`` the (B,) count of valid pixels.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must have the same shape")
    if pred.ndim == 2:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    mask = depth_valid_mask(gt, eigen_crop, min_depth, max_depth)
    # float64 and neutral values (1.0) at invalid pixels, so no inf/NaN leaks in via 0-depth GT.
    one = torch.ones((), dtype=torch.float64, device=gt.device)
    g = torch.where(mask, gt.double(), one)
    p = torch.where(mask, pred.double().clamp(min_depth, max_depth), one)
    m = mask.double()
    n = m.sum(dim=(1, 2))
    denom = n.clamp(min=1)

    def mean(x: Tensor) -> Tensor:
        return (x * m).sum(dim=(1, 2)) / denom

    ratio = torch.maximum(g / p, p / g)
    diff = g - p
    e = torch.log(p) - torch.log(g)
    e_mean = mean(e)
    out = {
        "delta1": mean((ratio < 1.25).double()),
        "delta2": mean((ratio < 1.25**2).double()),
        "delta3": mean((ratio < 1.25**3).double()),
        "absrel": mean(diff.abs() / g),
        "sqrel": mean(diff.square() / g),
        "rmse": mean(diff.square()).sqrt(),
        "rmse_log": mean(e.square()).sqrt(),
        "log10": mean((torch.log10(p) - torch.log10(g)).abs()),
        # variance can round to a tiny negative number for a perfect prediction
        "silog": 100.0 * (mean(e.square()) - e_mean.square()).clamp(min=0).sqrt(),
    }
    empty = n == 0
    nan = torch.full_like(n, math.nan)
    return {k: torch.where(empty, nan, v) for k, v in out.items()}, n.long()


class DepthAccumulator:
    """Per-image depth metrics averaged over images, accumulated batch by batch.

    ``update(pred, gt)`` takes (B, H, W) (or (H, W)) predictions and ground truth in metres
    at GT resolution. ``compute()`` returns the mean of each name in
    :data:`DEPTH_METRIC_NAMES` over images with at least one valid pixel, ``n_images``
    (those images) and ``n_skipped`` (images with no valid pixel, left out of the means).
    """

    def __init__(
        self,
        eigen_crop: bool | None = None,
        min_depth: float = MIN_DEPTH,
        max_depth: float = MAX_DEPTH,
    ) -> None:
        self.eigen_crop = eigen_crop
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.sums = {k: 0.0 for k in DEPTH_METRIC_NAMES}
        self.n_images = 0
        self.n_skipped = 0

    def update(self, pred: Tensor, gt: Tensor) -> None:
        metrics, n_valid = per_image_depth_metrics(pred, gt, self.eigen_crop, self.min_depth, self.max_depth)
        keep = n_valid > 0
        for k, v in metrics.items():
            self.sums[k] += float(v[keep].sum().item())
        kept = int(keep.sum().item())
        self.n_images += kept
        self.n_skipped += int(keep.numel()) - kept

    def compute(self) -> dict[str, float | int]:
        """Means over images (NaN when no image had a valid pixel) plus the counts."""
        n = self.n_images
        out: dict[str, float | int] = {k: (self.sums[k] / n if n else math.nan) for k in DEPTH_METRIC_NAMES}
        out["n_images"] = n
        out["n_skipped"] = self.n_skipped
        return out
