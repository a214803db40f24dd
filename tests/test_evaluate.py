"""Evaluation loops on tiny synthetic datasets (CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from tosa_bench.models.configs import get_config
from tosa_bench.models.vit import VisionTransformer
from tosa_bench.tasks.depth_model import DepthModel
from tosa_bench.tasks.evaluate import evaluate_classification, evaluate_depth, resolve_autocast
from tosa_bench.tasks.metrics import DEPTH_METRIC_NAMES


class ListDataset(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def _vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(get_config("test_tiny")).eval()
    with torch.no_grad():
        model.head.weight.mul_(50.0)  # spread the logits so argmax is not a near-tie
    return model


def _labelled_by_model(model: nn.Module, n: int, perm: Tensor) -> tuple[ListDataset, Tensor]:
    """Images whose label is ``perm[argmax model(image)]``, keeping clear winners only."""
    torch.manual_seed(1)
    images = torch.randn(4 * n, 3, 32, 32)
    with torch.inference_mode():
        logits = model(images)
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-2
    images, winners = images[clear][:n], logits[clear].argmax(1)[:n]
    assert len(images) == n
    return ListDataset([(images[i], int(perm[winners[i]])) for i in range(n)]), winners


def test_permuted_classifier_scores_100() -> None:
    model = _vit()
    perm = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])  # true class = perm[model's class]
    data, winners = _labelled_by_model(model, 12, perm)
    base = evaluate_classification(model, data, batch_size=5, device="cpu")
    # unpermuted, the model is right exactly where perm fixes its class (only class 5)
    assert base["correct_top1"] == int((perm[winners] == winners).sum())
    # relabel the classifier: new output row perm[c] = old row c
    with torch.no_grad():
        inv = torch.argsort(perm)
        model.head.weight.copy_(model.head.weight[inv])
        model.head.bias.copy_(model.head.bias[inv])
    out = evaluate_classification(model, data, batch_size=5, device="cpu")
    assert out["top1"] == 100.0 and out["top5"] == 100.0
    assert out["n_images"] == 12 and out["n_unreadable"] == 0
    assert out["correct_top1"] == 12


def test_limit_and_dropping_collate() -> None:
    model = _vit()
    good = (torch.zeros(3, 32, 32), 0)
    data = ListDataset([good, None, good, None, None, good, good])  # None = unreadable

    def drop_collate(batch: list):
        kept = [b for b in batch if b is not None]
        n_bad = len(batch) - len(kept)
        if not kept:
            return None, None, n_bad
        images, labels = default_collate(kept)
        return images, labels, torch.tensor(n_bad)

    out = evaluate_classification(model, data, batch_size=2, device="cpu", collate_fn=drop_collate)
    assert out["n_images"] == 4 and out["n_unreadable"] == 3
    out = evaluate_classification(model, data, batch_size=3, device="cpu", collate_fn=drop_collate, limit=3)
    assert out["n_images"] == 2 and out["n_unreadable"] == 1


def test_training_mode_restored_and_precision_checks() -> None:
    model = _vit().train()
    data = ListDataset([(torch.zeros(3, 32, 32), 1)])
    out = evaluate_classification(model, data, batch_size=1, device="cpu", dtype="bf16")
    assert out["n_images"] == 1 and model.training
    with pytest.raises(ValueError, match="fp16"):
        evaluate_classification(model, data, batch_size=1, device="cpu", dtype="fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_autocast("int8", "cpu")
    assert resolve_autocast("fp32", "cpu") is None
    assert resolve_autocast("fp16", "cuda") is torch.float16


def _depth_data(n: int, size: tuple[int, int], seed: int = 0) -> ListDataset:
    g = torch.Generator().manual_seed(seed)
    return ListDataset(
        [(torch.randn(3, *size, generator=g), torch.rand(*size, generator=g) * 9 + 0.5) for _ in range(n)]
    )


def test_evaluate_depth_runs_and_returns_all_keys() -> None:
    torch.manual_seed(0)
    model = DepthModel(VisionTransformer(get_config("test_tiny")), features=8, stage_channels=(4, 8, 8, 8), head_channels=4)
    data = _depth_data(3, (30, 44))  # not a multiple of the patch: rounded to 32x48
    out = evaluate_depth(model, data, batch_size=2, device="cpu")
    assert set(DEPTH_METRIC_NAMES) <= set(out)
    assert out["n_images"] == 3 and out["n_skipped"] == 0 and out["n_unreadable"] == 0
    assert all(math.isfinite(out[k]) for k in DEPTH_METRIC_NAMES)
    assert 0.0 <= out["delta1"] <= out["delta2"] <= out["delta3"] <= 1.0
    # NYU-sized GT, model run at a small input size, predictions resized back for scoring
    out = evaluate_depth(model, _depth_data(1, (480, 640)), batch_size=1, device="cpu", input_size=(32, 40))
    assert out["n_images"] == 1 and all(math.isfinite(out[k]) for k in DEPTH_METRIC_NAMES)


class ConstantDepth(nn.Module):
    """Predicts ``value`` metres everywhere; records the input sizes it saw."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.sizes: list[tuple[int, int]] = []

    def forward(self, images: Tensor) -> Tensor:
        self.sizes.append(tuple(images.shape[-2:]))
        return torch.full((images.shape[0], 1, *images.shape[-2:]), self.value)


def test_evaluate_depth_hand_values_and_resizing() -> None:
    gt = torch.full((480, 640), 2.0)
    gt[:45] = 0.0  # outside the crop anyway
    gt[100, 100] = 20.0  # invalid (>= 10 m)
    data = ListDataset([(torch.zeros(3, 480, 640), gt), (torch.zeros(3, 480, 640), torch.full((480, 640), 4.0))])
    model = ConstantDepth(2.0)
    out = evaluate_depth(model, data, batch_size=2, device="cpu", input_size=(24, 32))
    assert model.sizes == [(24, 32)]
    assert out["n_images"] == 2
    # image 1 perfect; image 2: pred 2 vs gt 4 -> absrel 0.5, ratio 2, rmse 2
    assert out["absrel"] == pytest.approx(0.25)
    assert out["rmse"] == pytest.approx(1.0)
    assert out["delta1"] == pytest.approx(0.5) and out["delta3"] == pytest.approx(0.5)
    assert out["silog"] == pytest.approx(0.0, abs=1e-4)


def test_evaluate_depth_skips_images_without_valid_pixels() -> None:
    data = ListDataset([(torch.zeros(3, 8, 8), torch.zeros(8, 8)), (torch.zeros(3, 8, 8), torch.ones(8, 8))])
    out = evaluate_depth(ConstantDepth(1.0), data, batch_size=2, device="cpu")
    assert out["n_images"] == 1 and out["n_skipped"] == 1
    assert out["delta1"] == 1.0
