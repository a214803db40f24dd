"""ImageNet-val loader: layout resolution, DeiT transform, class order, subsets, bad files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tosa_bench.errors import DatasetError
from tosa_bench.data.imagenet import (
    ImageNetVal,
    build_imagenet,
    collate_skip_bad,
    eval_transform,
    iter_batches,
    resolve_imagenet_root,
)
from tosa_bench.data.loader import make_loader
from tosa_bench.data.synthetic import make_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), n=40, size=48, num_classes=4, seed=0)


def _jpeg(path: Path, value: int = 128, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_resolve_both_layouts(tmp_path: Path, shapes: Path) -> None:
    assert resolve_imagenet_root(shapes) == shapes / "val"
    assert resolve_imagenet_root(shapes / "val") == shapes / "val"


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        resolve_imagenet_root(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        resolve_imagenet_root(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    _jpeg(tmp_path / "flat" / "a.JPEG")
    with pytest.raises(DatasetError, match="no class folders"):
        resolve_imagenet_root(tmp_path / "flat")
    (tmp_path / "noimg" / "n01").mkdir(parents=True)
    (tmp_path / "noimg" / "n01" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images"):
        resolve_imagenet_root(tmp_path / "noimg")


def test_eval_transform_deit() -> None:
    t = eval_transform()
    assert t.transforms[0].size == 256 and t.transforms[1].size == (224, 224)
    assert eval_transform(224, 0.9).transforms[0].size == 248
    x = t(Image.new("RGB", (500, 375), (124, 116, 104)))  # ~ the mean colour
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert x.abs().max() < 0.05


def test_class_order_is_sorted_wnids(tmp_path: Path) -> None:
    for wnid in ["n03000000", "n01000000", "n02000000"]:  # created out of order
        _jpeg(tmp_path / "val" / wnid / "x.JPEG", value=int(wnid[2]) * 60)
    (tmp_path / "val" / ".ipynb_checkpoints").mkdir()
    ds = build_imagenet(tmp_path, img_size=32)
    assert ds.classes == ["n01000000", "n02000000", "n03000000"]
    assert ds.class_to_idx == {"n01000000": 0, "n02000000": 1, "n03000000": 2}
    img, label = ds[2]
    assert label == 2 and img.shape == (3, 32, 32) and img.dtype == torch.float32


def test_items_and_expected_classes(shapes: Path) -> None:
    ds = build_imagenet(shapes, img_size=32, expected_classes=4)
    assert len(ds) == 40
    img, label = ds[0]
    assert img.shape == (3, 32, 32) and isinstance(label, int) and label == 0
    with pytest.raises(DatasetError, match=r"4 class folders.*1000"):
        build_imagenet(shapes, expected_classes=1000)


def test_limit_balanced_and_deterministic(shapes: Path) -> None:
    a = build_imagenet(shapes, img_size=32, limit=10)
    b = build_imagenet(shapes, img_size=32, limit=10)
    assert a.samples == b.samples and len(a) == 10
    assert Counter(a.targets) == {0: 3, 1: 3, 2: 2, 3: 2}
    full = build_imagenet(shapes, img_size=32)
    for c in range(4):  # each class contributes its first files in sorted order
        firsts = sorted(p for p, t in full.samples if t == c)
        mine = [p for p, t in a.samples if t == c]
        assert mine == firsts[: len(mine)]
    assert len(build_imagenet(shapes, img_size=32, limit=1000)) == 40


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, workers: int) -> None:
    for i in range(6):
        _jpeg(tmp_path / "val" / f"n0{i % 2}" / f"img{i}.JPEG", value=40 * i)
    garbage = tmp_path / "val" / "n00" / "bad_garbage.JPEG"
    garbage.write_bytes(b"this is not a jpeg")
    good = (tmp_path / "val" / "n01" / "img1.JPEG").read_bytes()
    truncated = tmp_path / "val" / "n01" / "bad_truncated.JPEG"
    truncated.write_bytes(good[: len(good) // 2])

    ds = build_imagenet(tmp_path, img_size=16)
    assert len(ds) == 8
    loader = make_loader(ds, batch_size=3, num_workers=workers, collate_fn=collate_skip_bad)
    seen = [(x, y) for x, y in iter_batches(loader)]
    n_ok = sum(len(y) for _, y in seen)
    assert n_ok == 6
    assert all(x.shape[1:] == (3, 16, 16) for x, _ in seen)
    assert ds.num_unreadable == 2
    assert sorted(ds.unreadable) == sorted([str(garbage), str(truncated)])
    assert all(ds.unreadable_reasons.values())
    list(iter_batches(loader))  # a second pass does not double count
    assert ds.num_unreadable == 2


def test_direct_indexing_and_batch_contract(tmp_path: Path) -> None:
    _jpeg(tmp_path / "n00" / "a.JPEG")
    (tmp_path / "n00" / "b.JPEG").write_bytes(b"\x00" * 10)
    ds = ImageNetVal(tmp_path, img_size=16)
    bad = ds[1]
    assert not isinstance(bad, tuple) and bad.path.endswith("b.JPEG")
    assert ds.unreadable == [bad.path]
    assert np.isfinite(ds[0][0].numpy()).all()
    # (images, targets, n_dropped) contract: int(batch[2]) is the number dropped
    images, labels, dropped = collate_skip_bad([ds[0], ds[1], ds[1]])
    assert images.shape == (1, 3, 16, 16) and labels.tolist() == [0] and int(dropped) == 2
    images, labels, dropped = collate_skip_bad([ds[1]])
    assert images.numel() == 0 and labels.numel() == 0 and int(dropped) == 1
