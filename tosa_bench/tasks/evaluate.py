"""Accuracy evaluation loops: ImageNet-style classification and NYU-style depth.

These functions measure accuracy only; they never time anything (timing lives in
``tosa_bench.measure``), so they are free to use a DataLoader, pinned memory and a
progress bar.

Conventions:

* The model is moved to ``device`` and put in eval mode; its previous train/eval mode is
  restored afterwards. Everything runs under ``torch.inference_mode()``.
* ``dtype`` is the autocast precision: ``"fp32"`` (no autocast), ``"fp16"`` or ``"bf16"``.
  fp16 is CUDA-only: on a CPU it raises ``ValueError`` rather than silently changing
  what is measured. bf16 on a CPU uses CPU autocast. Weights stay fp32 in every case;
  outputs are cast to fp32 before any metric.
* Batches: the default collate gives ``(images, targets)``. A ``collate_fn`` that drops
  unreadable items may return ``(images, targets, n_dropped)`` instead (``n_dropped`` an
  int or 0-d tensor); the counts are summed into ``n_unreadable``. A batch whose every
  item was dropped may carry ``images=None`` or an empty tensor and is skipped.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from tosa_bench.data.loader import make_loader
from tosa_bench.errors import OptionError
from tosa_bench.precision import autocast, resolve_autocast
from tosa_bench.tasks.metrics import DEPTH_METRIC_NAMES, ClassificationAccumulator, DepthAccumulator

__all__ = ["evaluate_classification", "evaluate_depth", "resolve_autocast"]

def _unpack(batch: Any) -> tuple[Tensor | None, Any, int]:
    """(images, targets, n_dropped) from a 2- or 3-tuple batch (see module docstring)."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError(
            "a batch must be (images, targets) or (images, targets, n_dropped); "
            f"got {type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}"
        )
    n_bad = int(batch[2]) if len(batch) == 3 else 0
    images = batch[0]
    if images is not None and images.numel() == 0:
        images = None
    return images, batch[1], n_bad


@contextlib.contextmanager
def _eval_mode(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    was_training = model.training
    model.to(device).eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _progress(loader: DataLoader, enabled: bool, description: str) -> Iterable:
    if not enabled:
        yield from loader
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=len(loader))
        for batch in loader:
            yield batch
            bar.advance(task)


class _Batches:
    """The loader's usable batches as (images on ``device``, targets as given), behind a
    progress bar if asked; images the dataset could not read are counted in
    ``unreadable`` and batches left empty by them are skipped. ``positions`` holds the
    dataset positions of the images of the batch last yielded (the loader keeps dataset
    order; unreadable items, which carry their index, are left out)."""

    def __init__(self, loader: DataLoader, device: torch.device, progress: bool, description: str) -> None:
        self.loader, self.device, self.progress, self.description = loader, device, progress, description
        self.unreadable = 0
        self.positions: list[int] = []

    def __iter__(self) -> Iterator[tuple[Tensor, Any]]:
        start = 0
        for batch in _progress(self.loader, self.progress, self.description):
            images, targets, n_bad = _unpack(batch)
            self.unreadable += n_bad
            n_items = (0 if images is None else int(images.shape[0])) + n_bad
            bad = {int(getattr(item, "index", -1)) for item in batch[2]} if n_bad and isinstance(batch[2], list) else set()
            self.positions = [i for i in range(start, start + n_items) if i not in bad][: n_items - n_bad]
            start += n_items
            if images is not None:
                yield images.to(self.device, non_blocking=True), targets

    def result(self, metrics: dict[str, Any], dtype: str, device: torch.device) -> dict[str, Any]:
        """``metrics`` with the unreadable count and the dtype/device of the run."""
        return {**metrics, "n_unreadable": self.unreadable, "dtype": str(dtype), "device": str(device)}


def evaluate_classification(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device | str,
    dtype: str | torch.dtype = "fp32",
    num_workers: int = 0,
    limit: int | None = None,
    collate_fn: Callable | None = None,
    progress: bool = False,
    observer: Callable[[nn.Module, list[int]], None] | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 accuracy of ``model`` (images (B,3,S,S) -> logits (B,C)) on ``dataset``.

    Dataset items are ``(float32 [3,S,S] normalised image, int label)``; ``limit`` keeps
    only the first ``limit`` items (in dataset order). ``observer(model, positions)``, if
    given, is called after every batch's forward with the dataset positions of its images
    (for what the forward left on the model, e.g. ``model.reducer.last_selection``).

    Returns:
        ``top1``, ``top5`` in percent (0-100), ``n_images`` (scored), ``n_unreadable``
        (dropped by ``collate_fn``), ``correct_top1``, ``correct_top5`` (counts),
        ``dtype`` and ``device`` (strings, for the record).
    """
    device = torch.device(device)
    resolve_autocast(dtype, device)  # fail before any work
    loader = make_loader(dataset, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda", collate_fn=collate_fn, limit=limit)
    acc = ClassificationAccumulator()
    batches = _Batches(loader, device, progress, "classification")
    with _eval_mode(model, device), torch.inference_mode():
        for images, labels in batches:
            labels = torch.as_tensor(labels).to(device, non_blocking=True)
            with autocast(dtype, device):
                logits = model(images)
            acc.update(logits.float(), labels)
            if observer is not None:
                observer(model, batches.positions)
    return batches.result(acc.compute(), dtype, device)


def round_to_patch(size: tuple[int, int], patch: int | None) -> tuple[int, int]:
    """Nearest multiple of ``patch`` per side (at least one patch); unchanged if no patch."""
    if not patch:
        return size
    return tuple(max(patch, int(round(s / patch)) * patch) for s in size)  # type: ignore[return-value]


def _check_input_size(input_size: Any, patch: int | None) -> None:
    """OptionError unless ``input_size`` is (h, w) of positive multiples of ``patch``."""
    hw = tuple(input_size)
    step = patch or 1
    if len(hw) != 2 or not all(isinstance(s, int) and s > 0 and s % step == 0 for s in hw):
        shown = "x".join(map(str, hw))
        allowed = f"positive multiples of the patch size {patch}" if patch else "positive integers"
        raise OptionError(f"input size {shown}: expected height x width as {allowed}")


def evaluate_depth(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device | str,
    dtype: str | torch.dtype = "fp32",
    input_size: tuple[int, int] | None = None,
    num_workers: int = 0,
    limit: int | None = None,
    collate_fn: Callable | None = None,
    eigen_crop: bool | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """NYU depth metrics of ``model`` (images (B,3,h,w) -> depth (B,h,w) metres).

    Dataset items are ``(float32 [3,H,W] normalised image, float32 [H,W] depth in metres)``
    at ground-truth resolution (480x640 for NYU). Images are resized (bilinear,
    align_corners=False) to ``input_size`` = (h, w) model input pixels; predictions are
    resized back (bilinear) to the GT size, then scored per
    :mod:`tosa_bench.tasks.metrics` (clamp to [1e-3, 10] m, valid 1e-3 < gt < 10,
    Eigen crop on 480x640 unless ``eigen_crop`` says otherwise).

    ``input_size=None`` means the GT size itself, rounded to the nearest multiple of
    ``model.patch_size`` when the model has one (:class:`DepthModel` does). A model output
    of shape (B, 1, h, w) is accepted too.

    Returns:
        the nine metric means (see ``DEPTH_METRIC_NAMES``), ``n_images`` (images scored),
        ``n_skipped`` (images without a valid pixel), ``n_unreadable`` (dropped by
        ``collate_fn``), ``n_nonfinite_pixels`` (NaN/inf predictions), ``dtype`` and
        ``device``. A metric that is not finite is None, with ``reason`` saying why.
    """
    device = torch.device(device)
    resolve_autocast(dtype, device)  # fail before any work
    loader = make_loader(dataset, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda", collate_fn=collate_fn, limit=limit)
    acc = DepthAccumulator(eigen_crop=eigen_crop)
    patch = getattr(model, "patch_size", None)
    patch = patch if isinstance(patch, int) else None
    if input_size is not None:
        _check_input_size(input_size, patch)
    batches = _Batches(loader, device, progress, "depth")
    nonfinite = predicted = 0
    with _eval_mode(model, device), torch.inference_mode():
        for images, gt in batches:
            gt = gt.to(device, non_blocking=True).float()
            if gt.ndim == 4 and gt.shape[1] == 1:
                gt = gt[:, 0]
            gt_size = (gt.shape[-2], gt.shape[-1])
            size = tuple(input_size) if input_size is not None else round_to_patch(gt_size, patch)
            if tuple(images.shape[-2:]) != size:
                images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            with autocast(dtype, device):
                pred = model(images)
            pred = pred.float()
            if pred.ndim == 3:
                pred = pred.unsqueeze(1)
            if pred.ndim != 4 or pred.shape[1] != 1:
                raise ValueError(f"depth model must return (B, h, w) or (B, 1, h, w), got {tuple(pred.shape)}")
            if tuple(pred.shape[-2:]) != gt_size:
                pred = F.interpolate(pred, size=gt_size, mode="bilinear", align_corners=False)
            nonfinite += int((~torch.isfinite(pred)).sum())
            predicted += pred.numel()
            acc.update(pred[:, 0], gt)
    return batches.result(_finite_metrics(acc.compute(), nonfinite, predicted), dtype, device)


def _finite_metrics(metrics: dict[str, Any], nonfinite: int, predicted: int) -> dict[str, Any]:
    """``metrics`` with ``n_nonfinite_pixels``; where the model predicted NaN or inf
    anywhere, or a metric is not finite, the metrics are None and ``reason`` says why.
    Why all of them: NaN compares false, so delta1 would read 0.0 as if measured, and
    a mean over the finite pixels only would hide the failure; a bare NaN is not valid
    JSON either."""
    out = dict(metrics)
    bad = [k for k in DEPTH_METRIC_NAMES if isinstance(out.get(k), float) and not math.isfinite(out[k])]
    out["n_nonfinite_pixels"] = nonfinite
    if nonfinite:
        bad = [k for k in DEPTH_METRIC_NAMES if k in out]
        out["reason"] = f"the model predicted NaN or inf for {nonfinite:,} of {predicted:,} pixels; metrics not computed"
    elif bad:
        out["reason"] = "no valid ground-truth pixel; metrics not computed"
    for k in bad:
        out[k] = None
    return out
