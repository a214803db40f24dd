"""Where a selection lands (tasks/object_tokens.py): object tokens from an annotation,
worked out by hand on pixel-exact geometry, and the object-token share of hand-made
selections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tosa_bench.data.synthetic import _draw_shapes_image, _rng, make_shapes, object_mask
from tosa_bench.methods.base import BlockSelection
from tosa_bench.tasks.object_tokens import ObjectShare, dataset_object_tokens, find_annotations, object_tokens


def _square(cx: float, cy: float, r: float = 5.0) -> dict:
    # a square of radius r fills max(|dx|, |dy|) <= 0.8 r: with r = 5, pixel centres within 4 px
    return {"shape": "square", "cx": cx, "cy": cy, "radius": r}


def test_a_square_inside_one_patch_is_one_token():
    # 64 px, no resize (crop_pct 1): centre (20, 20) covers pixels 16..23 = patch (2, 2) exactly
    mask = object_tokens(_square(20.0, 20.0), 64, 64, 8, crop_pct=1.0)
    assert mask.shape == (64,) and np.flatnonzero(mask).tolist() == [2 * 8 + 2]


def test_a_square_on_a_patch_corner_is_four_tokens():
    # centre (24, 24): pixels 20..27 cover a quarter of patches (2,2), (2,3), (3,2), (3,3)
    assert np.flatnonzero(object_tokens(_square(24.0, 24.0), 64, 64, 8, crop_pct=1.0)).tolist() == [18, 19, 26, 27]


def test_the_centre_crop_shifts_the_patches():
    # generated at int(64 / 0.875) = 73 px: no resize, crop offset round(4.5) = 4 (torchvision's)
    # so a square centred at (24, 24) of the file covers model pixels 16..23: patch (2, 2)
    assert np.flatnonzero(object_tokens(_square(24.0, 24.0), 73, 64, 8, crop_pct=0.875)).tolist() == [18]


def test_a_sliver_below_the_coverage_threshold_is_not_an_object_token():
    # pixels 16..23 in y, 22..29 in x (centre (26, 20)): patch (2,2) 2/8 covered, (2,3) 6/8 covered
    assert np.flatnonzero(object_tokens(_square(26.0, 20.0), 64, 64, 8, crop_pct=1.0)).tolist() == [18, 19]
    # a 1-pixel-wide overlap: 1/8 of the patch (12.5%) is above 10%; shift to 0 overlap -> gone
    assert np.flatnonzero(object_tokens(_square(27.0, 20.0), 64, 64, 8, crop_pct=1.0)).tolist() == [18, 19]
    assert np.flatnonzero(object_tokens(_square(28.0, 20.0), 64, 64, 8, crop_pct=1.0)).tolist() == [19]


def test_object_mask_redraws_the_painted_pixels():
    img, ann = _draw_shapes_image(_rng(5, 3), 73, 3, 10, radius=(0.10, 0.14), inner=0.875)
    mask = object_mask(ann, 73)
    painted = img[mask]
    assert mask.sum() > 20 and (painted == painted[0]).all()  # one flat colour, exactly where the mask is
    # the object lies inside the central 87.5%: the evaluation crop never cuts it
    ys, xs = np.nonzero(mask)
    assert xs.min() >= 4 and xs.max() < 4 + 64 and ys.min() >= 4 and ys.max() < 4 + 64


def test_dataset_masks_follow_dataset_order(tmp_path):
    from tosa_bench.data.imagenet import build_imagenet

    root = make_shapes(tmp_path / "s", n=6, size=73, num_classes=3, seed=1, radius=(0.10, 0.14), inner=0.875)
    ds = build_imagenet(root, img_size=64)
    found = find_annotations(root)
    assert found == root / "annotations.json" and find_annotations(root / "val") == found
    masks = dataset_object_tokens(ds.samples, found, 64, 8)
    assert masks.shape == (6, 64) and masks.dtype == torch.bool
    import json

    meta = {r["file"]: r for r in json.loads(found.read_text())["images"]}
    for i, (path, _) in enumerate(ds.samples):
        ann = meta["val/" + "/".join(path.split("/")[-2:])]
        assert masks[i].tolist() == object_tokens(ann, 73, 64, 8).tolist()
        assert 1 <= int(masks[i].sum()) <= 16


def test_share_of_hand_made_selections():
    objects = torch.tensor([[True, True, False, False], [False, False, False, True]])
    acc = ObjectShare()
    # block 1: image 0 ran tokens 1, 3 (patches 0, 2): 1 of its 2 object tokens; image 1 ran 4, 2
    # (patches 3, 1): its 1 object token -> 2 of 3; chosen 4 of 8 patches
    acc.update({1: BlockSelection("ran", torch.tensor([[0, 1, 3], [0, 4, 2]])),
                3: BlockSelection("kept", torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])),
                2: BlockSelection("merged", torch.tensor([[0, 1, 1, 2, 3], [0, 1, 2, 2, 3]]))}, objects)
    out = acc.compute()
    assert out["object_share"] == {"1": pytest.approx(2 / 3), "3": 1.0}
    assert out["object_chance"] == {"1": 0.5, "3": 1.0}
    assert out["object_share_mean"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert out["object_chance_mean"] == pytest.approx(0.75)
    # EViT's fused token (position N = 5) is no patch: it is not counted
    fused = ObjectShare()
    fused.update({6: BlockSelection("kept", torch.tensor([[0, 1, 5], [0, 4, 5]]))}, objects)
    assert fused.compute()["object_share"] == {"6": pytest.approx(2 / 3)} and fused.compute()["object_chance"] == {"6": 0.25}
    # a second batch is pooled (micro average), not averaged per batch
    acc.update({1: BlockSelection("ran", torch.tensor([[0, 3, 4]]))}, torch.tensor([[True, False, False, False]]))
    assert acc.compute()["object_share"]["1"] == pytest.approx(2 / 4)


def test_nothing_chosen_gives_none():
    acc = ObjectShare()
    acc.update({}, torch.zeros(2, 4, dtype=torch.bool))
    acc.update({1: BlockSelection("merged", torch.zeros(2, 5, dtype=torch.long))}, torch.ones(2, 4, dtype=torch.bool))
    assert acc.compute() == {"object_share": None, "object_chance": None, "object_share_mean": None, "object_chance_mean": None}
