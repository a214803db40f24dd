"""Synthetic generators: deterministic, in the real on-disk formats, physically sane."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from tosa_bench.errors import DatasetError
from tosa_bench.data.synthetic import make_dataset, make_rooms, make_shapes


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shapes_layout_and_determinism(tmp_path: Path) -> None:
    a = make_shapes(tmp_path / "a", n=12, size=64, num_classes=4, seed=3)
    b = make_shapes(tmp_path / "b", n=12, size=64, num_classes=4, seed=3)
    c = make_shapes(tmp_path / "c", n=12, size=64, num_classes=4, seed=4)
    assert _files(a) == _files(b)
    assert _files(a) != _files(c)
    wnids = sorted(p.name for p in (a / "val").iterdir())
    assert wnids == ["n00000000", "n00000001", "n00000002", "n00000003"]
    assert all(len(list((a / "val" / w).glob("*.JPEG"))) == 3 for w in wnids)
    assert (a / "README.txt").is_file()
    meta = json.loads((a / "annotations.json").read_text())
    assert [c["shape"] for c in meta["classes"]] == ["circle", "square", "triangle", "cross"]
    rec = meta["images"][0]  # a circle: its centre pixel has the object's colour
    img = np.asarray(Image.open(a / rec["file"]), np.float32)
    assert img.shape == (64, 64, 3)
    from tosa_bench.data.synthetic import COLOURS

    centre = img[int(rec["cy"]), int(rec["cx"])]
    assert np.abs(centre - np.array(COLOURS[rec["colour"]]) * 0.92).max() < 40


def test_rooms_format_ranges_and_splits(tmp_path: Path) -> None:
    out = make_rooms(tmp_path, n=5, height=48, width=64, seed=1, n_test=2)
    mat = out / "nyu_depth_v2_labeled.mat"
    head = mat.read_bytes()[:128]
    assert head.startswith(b"MATLAB 7.3 MAT-file") and head[124:128] == b"\x00\x02IM"
    assert scipy.io.matlab.matfile_version(str(mat)) == (2, 0)
    with h5py.File(mat, "r") as f:
        assert f["images"].shape == (5, 3, 64, 48) and f["images"].dtype == np.uint8
        assert f["depths"].shape == (5, 64, 48) and f["depths"].dtype == np.float32
        depths = f["depths"][()]
    assert 0.5 < depths.min() and depths.max() < 10.0
    splits = scipy.io.loadmat(out / "splits.mat")
    test, train = splits["testNdxs"], splits["trainNdxs"]
    assert test.shape == (2, 1) and train.shape == (3, 1)  # column vectors
    assert sorted(np.concatenate([test, train]).ravel().tolist()) == [1, 2, 3, 4, 5]  # 1-based


def test_rooms_brightness_tracks_depth(tmp_path: Path) -> None:
    """Sanity: what a model sees is informative about depth (nearer = brighter here)."""
    out = make_rooms(tmp_path, n=4, height=96, width=128, seed=0)
    with h5py.File(out / "nyu_depth_v2_labeled.mat", "r") as f:
        lum = f["images"][()].astype(np.float32).mean(1).ravel()
        depth = f["depths"][()].ravel()
    rank = lambda x: np.argsort(np.argsort(x)).astype(np.float64)  # noqa: E731
    spearman = np.corrcoef(rank(lum), rank(depth))[0, 1]
    assert spearman < -0.3, spearman


def test_rooms_deterministic(tmp_path: Path) -> None:
    a = make_rooms(tmp_path / "a", n=2, height=32, width=48, seed=7)
    b = make_rooms(tmp_path / "b", n=2, height=32, width=48, seed=7)
    with h5py.File(a / "nyu_depth_v2_labeled.mat") as fa, h5py.File(b / "nyu_depth_v2_labeled.mat") as fb:
        assert np.array_equal(fa["images"][()], fb["images"][()])
        assert np.array_equal(fa["depths"][()], fb["depths"][()])


def test_make_dataset_dispatch(tmp_path: Path) -> None:
    rooms = make_dataset("rooms", tmp_path / "r", n=1, size=96)
    with h5py.File(rooms / "nyu_depth_v2_labeled.mat", "r") as f:
        assert f["images"].shape == (1, 3, 128, 96)  # width 4/3 x 96 = 128, stored (W, H)
    shapes = make_dataset("shapes", tmp_path / "s", n=3, size=48)
    assert len(list((shapes / "val").rglob("*.JPEG"))) == 3
    with pytest.raises(DatasetError, match="unknown synthetic dataset"):
        make_dataset("clouds", tmp_path / "x")
