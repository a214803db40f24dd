"""Metrics against hand-computed values (shared/reference §5 for the depth protocol)."""

from __future__ import annotations

import math

import pytest
import torch

from tosa_bench.tasks.metrics import (
    DEPTH_METRIC_NAMES,
    ClassificationAccumulator,
    DepthAccumulator,
    depth_valid_mask,
    per_image_depth_metrics,
    topk_correct,
)

LN2 = math.log(2.0)


# ---- classification ----------------------------------------------------------------------
def test_topk_correct_hand_values() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.2, 0.3, 0.4, 0.5],  # order: 1,6,5,4,3,0,2
            [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # order: 0,6,5,4,3,2,1
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # order: 6,5,4,3,2,1,0
        ]
    )
    labels = torch.tensor([1, 2, 2])  # top1 hit; rank 6 (miss top5); rank 5 (hit top5)
    assert topk_correct(logits, labels, ks=(1, 5)) == {1: 1, 5: 2}
    assert topk_correct(logits, labels, ks=(1, 2, 6)) == {1: 1, 2: 1, 6: 3}


def test_topk_fewer_classes_than_k() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    labels = torch.tensor([0, 2])  # both last-ranked: top-1 misses, top-5 (=top-3) hits
    assert topk_correct(logits, labels) == {1: 0, 5: 2}


def test_classification_accumulator_percent() -> None:
    acc = ClassificationAccumulator()
    acc.update(torch.eye(4), torch.tensor([0, 1, 2, 0]))  # 3 of 4 top-1
    acc.update(torch.eye(4)[:2], torch.tensor([0, 1]))  # 2 of 2
    out = acc.compute()
    assert out["n_images"] == 6
    assert out["top1"] == pytest.approx(100.0 * 5 / 6)
    assert out["top5"] == pytest.approx(100.0)  # C = 4 < 5
    assert math.isnan(ClassificationAccumulator().compute()["top1"])


# ---- depth -------------------------------------------------------------------------------
def _hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # 0 is invalid
    pred = torch.tensor([[1.0, 1.0], [8.0, 5.0]])
    return pred, gt


def test_depth_metrics_hand_values() -> None:
    pred, gt = _hand_case()
    m, n = per_image_depth_metrics(pred, gt)
    assert n.tolist() == [3]
    # valid pairs (gt, pred): (1,1), (2,1), (4,8); ratios 1, 2, 2; e = 0, -ln2, +ln2
    expected = {
        "delta1": 1 / 3,
        "delta2": 1 / 3,  # 2 > 1.5625
        "delta3": 1 / 3,  # 2 > 1.953125
        "absrel": (0 + 1 / 2 + 4 / 4) / 3,
        "sqrel": (0 + 1 / 2 + 16 / 4) / 3,
        "rmse": math.sqrt((0 + 1 + 16) / 3),
        "rmse_log": math.sqrt(2 * LN2**2 / 3),
        "log10": 2 * math.log10(2.0) / 3,
        "silog": 100 * math.sqrt(2 * LN2**2 / 3 - 0.0),
    }
    for k, v in expected.items():
        assert m[k].item() == pytest.approx(v, rel=1e-9), k


def test_silog_removes_global_scale() -> None:
    gt = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m, _ = per_image_depth_metrics(1.5 * gt, gt)  # pure scale error
    assert m["silog"].item() == pytest.approx(0.0, abs=1e-5)
    assert m["rmse_log"].item() == pytest.approx(math.log(1.5))
    assert m["delta1"].item() == 0.0 and m["delta2"].item() == 1.0


def test_delta_thresholds_hand_values() -> None:
    gt = torch.ones(1, 4)
    pred = torch.tensor([[1.2, 1.5, 1.9, 2.5]])  # ratio < 1.25 | < 1.5625 | < 1.953 | none
    m, _ = per_image_depth_metrics(pred, gt)
    assert m["delta1"].item() == pytest.approx(0.25)
    assert m["delta2"].item() == pytest.approx(0.5)
    assert m["delta3"].item() == pytest.approx(0.75)


def test_prediction_clamp() -> None:
    gt = torch.tensor([[5.0, 1.0]])
    pred = torch.tensor([[20.0, -3.0]])  # -> 10 (ratio 2) and 1e-3 (ratio 1000)
    m, _ = per_image_depth_metrics(pred, gt)
    assert m["absrel"].item() == pytest.approx((5 / 5 + (1 - 1e-3) / 1) / 2)
    assert m["rmse"].item() == pytest.approx(math.sqrt((25 + (1 - 1e-3) ** 2) / 2))
    assert m["log10"].item() == pytest.approx((math.log10(2) + 3) / 2)


def test_valid_range_is_strict() -> None:
    gt = torch.tensor([[1e-3, 10.0, 10.5, float("nan"), 0.5, 9.99]])
    assert depth_valid_mask(gt).tolist() == [[False, False, False, False, True, True]]


def test_perfect_prediction() -> None:
    gt = torch.rand(2, 6, 7) * 9 + 0.5
    m, _ = per_image_depth_metrics(gt.clone(), gt)
    for k in ("delta1", "delta2", "delta3"):
        assert torch.all(m[k] == 1.0)
    for k in ("absrel", "sqrel", "rmse", "rmse_log", "log10", "silog"):
        assert torch.allclose(m[k], torch.zeros(2, dtype=torch.float64), atol=1e-6), k


def test_eigen_crop_on_480x640() -> None:
    gt = torch.full((480, 640), 2.0)
    mask = depth_valid_mask(gt)  # auto: crop applies
    assert int(mask.sum()) == (471 - 45) * (640 - 80)
    assert mask[45, 41] and mask[470, 600]
    assert not mask[44, 41] and not mask[45, 40] and not mask[471, 600] and not mask[470, 601]
    assert int(depth_valid_mask(gt, eigen_crop=False).sum()) == 480 * 640

    pred = torch.full((480, 640), 8.0)
    pred[45:471, 41:601] = 2.0  # right inside the crop, wrong outside
    m, n = per_image_depth_metrics(pred, gt)
    assert int(n) == 426 * 560
    assert m["absrel"].item() == pytest.approx(0.0) and m["delta1"].item() == 1.0
    m_nocrop, _ = per_image_depth_metrics(pred, gt, eigen_crop=False)
    outside = 1 - 426 * 560 / (480 * 640)
    assert m_nocrop["absrel"].item() == pytest.approx(3.0 * outside)  # |8-2|/2 outside


def test_eigen_crop_auto_and_forced() -> None:
    gt = torch.full((4, 5), 2.0)
    assert int(depth_valid_mask(gt).sum()) == 20  # auto: not 480x640, no crop
    with pytest.raises(ValueError, match="480x640"):
        depth_valid_mask(gt, eigen_crop=True)


def test_accumulator_averages_over_images_and_skips_empty() -> None:
    gt_a = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    pred_a = torch.tensor([[2.0, 1.0, 1.0, 1.0]])  # absrel 1/4, 4 valid pixels
    gt_b = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    pred_b = torch.tensor([[3.0, 1.0, 1.0, 1.0]])  # absrel 1/2, 1 valid pixel
    gt_c = torch.zeros(1, 4)  # no valid pixel: skipped
    acc = DepthAccumulator()
    acc.update(torch.stack([pred_a, pred_b]), torch.stack([gt_a, gt_b]))
    acc.update(torch.ones(1, 1, 4), gt_c.unsqueeze(0))
    out = acc.compute()
    assert set(DEPTH_METRIC_NAMES) <= set(out)
    assert out["n_images"] == 2 and out["n_skipped"] == 1
    assert out["absrel"] == pytest.approx((0.25 + 0.5) / 2)  # per image, not per pixel (0.3)
    assert out["delta1"] == pytest.approx((0.75 + 0.0) / 2)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        per_image_depth_metrics(torch.ones(2, 3), torch.ones(3, 2))
