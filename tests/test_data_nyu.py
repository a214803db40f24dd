"""NYU Depth V2 loaders: official v7.3 layout, 1-based splits, BTS PNG lists, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tosa_bench.errors import DatasetError
from tosa_bench.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from tosa_bench.data.nyu import NyuMatReader, build_nyu
from tosa_bench.data.synthetic import make_rooms


def _write_official_like(folder: Path, images: np.ndarray, depths: np.ndarray, **extra: np.ndarray) -> Path:
    """Write (N, H, W, 3) images / (N, H, W) depths as MATLAB v7.3 would (axes reversed).

    Independent of the project's generator on purpose, so the test checks the reader
    against the format rather than against our own writer.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["images"] = images.transpose(0, 3, 2, 1)  # MATLAB H x W x 3 x N, read reversed
        if depths is not None:
            f["depths"] = depths.transpose(0, 2, 1)
        for k, v in extra.items():
            f[k] = v
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 2-image, full-size 480x640 file with marker pixels, plus splits.mat (1-based)."""
    folder = tmp_path_factory.mktemp("nyu")
    images = np.zeros((2, 480, 640, 3), np.uint8)
    depths = np.full((2, 480, 640), 3.0, np.float32)
    images[0, 10, 600] = (1, 2, 3)  # row 10, col 600: only valid if H, W are not swapped
    images[1, 470, 5] = (200, 100, 50)
    depths[0, 10, 600] = 4.5
    depths[1, 470, 5] = 0.75
    path = _write_official_like(folder, images, depths)
    scipy.io.savemat(folder / "splits.mat", {"trainNdxs": np.array([[1.0]]), "testNdxs": np.array([[2.0]])})
    return path, images, depths


def test_official_layout_transposed_back(official: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, images, depths = official
    with h5py.File(path, "r") as f:
        assert f["images"].shape == (2, 3, 640, 480) and f["depths"].shape == (2, 640, 480)
    reader = NyuMatReader(path)
    img, dep = reader.read(0)
    assert img.shape == (3, 480, 640) and img.dtype == np.uint8
    assert dep.shape == (480, 640) and dep.dtype == np.float32
    assert tuple(img[:, 10, 600]) == (1, 2, 3) and dep[10, 600] == 4.5
    img, dep = reader.read(1)
    assert tuple(img[:, 470, 5]) == (200, 100, 50) and dep[470, 5] == 0.75
    assert np.array_equal(img, images[1].transpose(2, 0, 1)) and np.array_equal(dep, depths[1])


def test_splits_are_one_based(official: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, images, depths = official
    for where in (path, path.parent):  # the .mat itself or its folder
        test = build_nyu(where, split="test")
        assert test.indices == [1]
        assert build_nyu(where, split="train").indices == [0]
        assert build_nyu(where, split="all").indices == [0, 1]
    x, d = test[0]
    assert x.shape == (3, 480, 640) and x.dtype == torch.float32
    assert d.shape == (480, 640) and d.dtype == torch.float32 and d[470, 5] == 0.75
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expect = (torch.from_numpy(images[1].transpose(2, 0, 1)).float() / 255 - mean) / std
    assert torch.allclose(x, expect, atol=1e-6)
    raw_img, raw_dep = test.raw(0)
    assert raw_img.dtype == np.uint8 and np.array_equal(raw_dep, depths[1])


def test_mat_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        build_nyu(tmp_path / "missing.mat")
    imgs = np.zeros((1, 8, 12, 3), np.uint8)
    no_depth = _write_official_like(tmp_path / "a", imgs, None, labels=np.zeros((1, 12, 8)))
    with pytest.raises(DatasetError, match=r"lacks the array\(s\) depths; keys present: images, labels"):
        build_nyu(no_depth, split="all")
    portrait = tmp_path / "b" / "nyu_depth_v2_labeled.mat"
    portrait.parent.mkdir()
    with h5py.File(portrait, "w") as f:  # written (N, 3, H, W): not MATLAB's reversed layout
        f["images"] = np.zeros((1, 3, 8, 12), np.uint8)
        f["depths"] = np.zeros((1, 8, 12), np.float32)
    with pytest.raises(DatasetError, match="axes reversed"):
        build_nyu(portrait, split="all")
    ok = _write_official_like(tmp_path / "c", imgs, np.ones((1, 8, 12), np.float32))
    with pytest.raises(DatasetError, match="split file not found"):
        build_nyu(ok, split="test")
    scipy.io.savemat(ok.parent / "splits.mat", {"trainNdxs": np.array([[1.0]]), "testNdxs": np.array([[0.0], [2.0]])})
    with pytest.raises(DatasetError, match=r"outside 1\.\.1"):
        build_nyu(ok, split="test")
    (tmp_path / "d.mat").write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match="not an HDF5"):
        build_nyu(tmp_path / "d.mat", split="all")


@pytest.fixture(scope="module")
def rooms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rooms(tmp_path_factory.mktemp("rooms"), n=6, height=48, width=64, seed=2, n_test=3, write_png=True)


def test_generated_rooms_with_workers(rooms: Path) -> None:
    ds = build_nyu(rooms, split="test", limit=2)
    assert len(ds) == 2
    reader = ds.reader
    reader.read(0)  # open in this process, then make sure it pickles without the handle
    clone = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(clone.read(0)[1], reader.read(0)[1])
    loader = DataLoader(build_nyu(rooms, split="test"), batch_size=2, num_workers=2)
    xs, ds_ = zip(*loader)
    x, d = torch.cat(xs), torch.cat(ds_)
    assert x.shape == (3, 3, 48, 64) and d.shape == (3, 48, 64)
    assert 0.5 < d.min() and d.max() < 10


def test_bts_list_matches_mat(rooms: Path) -> None:
    bts = rooms / "bts"
    listed = build_nyu(bts)  # auto-detects nyudepthv2_test_files_with_gt.txt
    official = build_nyu(rooms, split="test")
    assert len(listed) == len(official) == 3
    dep_png = Image.open(listed.reader.pairs[0][1])
    assert dep_png.mode in ("I;16", "I") and np.asarray(dep_png).max() > 255  # 16-bit mm
    for i in range(3):
        (a_img, a_dep), (b_img, b_dep) = listed.raw(i), official.raw(i)
        assert np.array_equal(a_img, b_img)
        assert np.abs(a_dep - b_dep).max() <= 0.0005 + 1e-6  # millimetre quantisation
    assert np.isfinite(listed.reader.focals).all()
    explicit = build_nyu(bts / "nyudepthv2_test_files_with_gt.txt", limit=1)
    assert len(explicit) == 1


def test_bts_list_handmade_and_errors(tmp_path: Path) -> None:
    Image.new("RGB", (6, 4), (10, 20, 30)).save(tmp_path / "rgb.jpg", quality=100)
    Image.fromarray(np.full((4, 6), 1234, np.uint16)).save(tmp_path / "d.png")
    (tmp_path / "list.txt").write_text("rgb.jpg d.png\n\n")
    x, d = build_nyu(tmp_path)[0]
    assert x.shape == (3, 4, 6) and d.shape == (4, 6) and torch.allclose(d, torch.tensor(1.234))
    _, d256 = build_nyu(tmp_path, depth_scale=256.0)[0]
    assert torch.allclose(d256, torch.tensor(1234 / 256))
    (tmp_path / "list.txt").write_text("rgb.jpg d.png 518.8\nrgb.jpg gone.png 518.8\n")
    with pytest.raises(DatasetError, match=r"1 listed file\(s\) missing.*gone\.png"):
        build_nyu(tmp_path)
    (tmp_path / "other.txt").write_text("")
    with pytest.raises(DatasetError, match="several list files"):
        build_nyu(tmp_path)
