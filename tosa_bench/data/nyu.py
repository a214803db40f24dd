"""NYU Depth V2 test set: the official labelled ``.mat`` file or a BTS-style PNG list.

Official file (shared/reference §5). ``nyu_depth_v2_labeled.mat`` is MATLAB v7.3, i.e.
HDF5. MATLAB writes arrays column-major, so h5py sees the axes reversed:
``images`` has h5 shape (1449, 3, 640, 480) uint8 = (N, C, W, H) and ``depths``
(1449, 640, 480) float = (N, W, H), in metres. The reader swaps the last two axes and
returns image uint8 (3, H, W) = (3, 480, 640) and depth float32 (H, W) = (480, 640).
Other sizes are accepted (the project's synthetic rooms are smaller), but the file must
be landscape in the reversed layout (W >= H); a (N, 3, H, W) file written the "numpy way"
is rejected rather than read transposed. ``splits.mat`` is a classic MATLAB file
(``scipy.io.loadmat``) with 1-based column vectors ``trainNdxs`` (795) and ``testNdxs``
(654); they are converted to 0-based indices here.

h5py handles must not be shared across a fork, so the file is opened lazily on first read
in each process (and dropped when pickled for spawn-started workers).

BTS list. A folder of RGB images and 16-bit depth PNGs with a list file whose lines are
``rgb_relpath depth_relpath [focal]``; depth in metres = PNG value / ``depth_scale``
(1000 in BTS's NYU export; 0 = no measurement). Paths are relative to ``data_root``
(default: the folder given, or the list file's folder). The list file defines the split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from tosa_bench.errors import DatasetError, OptionError
from tosa_bench.data.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "MAT_NAME",
    "SPLITS_NAME",
    "OFFICIAL_IMAGES_H5_SHAPE",
    "OFFICIAL_DEPTHS_H5_SHAPE",
    "NyuMatReader",
    "NyuListReader",
    "NyuDepth",
    "build_nyu",
    "load_split",
    "find_list_file",
]

MAT_NAME = "nyu_depth_v2_labeled.mat"
SPLITS_NAME = "splits.mat"
#: h5py shapes of the official file (MATLAB axes reversed: N, C, W, H and N, W, H).
OFFICIAL_IMAGES_H5_SHAPE = (1449, 3, 640, 480)
OFFICIAL_DEPTHS_H5_SHAPE = (1449, 640, 480)
_SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}

RawItem = tuple[np.ndarray, np.ndarray]  # image uint8 (3, H, W), depth float32 (H, W) metres


class NyuMatReader:
    """Random access to the official (v7.3 / HDF5) labelled file.

    ``read(i)`` takes a 0-based index into the file (not into a split) and returns
    ``(image uint8 (3, H, W), depth float32 (H, W) metres)``. The file is validated once at
    construction; the handle is opened per process on first read.
    """

    def __init__(self, mat_path: str | os.PathLike[str]) -> None:
        import h5py

        self.path = Path(mat_path)
        if not self.path.is_file():
            raise DatasetError(f"NYU file not found: {self.path}")
        try:
            with h5py.File(self.path, "r") as f:
                self.num_images, self.height, self.width = _validate_mat(f, self.path)
        except OSError as exc:
            raise DatasetError(
                f"{self.path} is not an HDF5 (MATLAB v7.3) file: {exc}"
            ) from None
        self._file: Any = None
        self._pid: int | None = None

    def _handle(self) -> Any:
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __len__(self) -> int:
        return self.num_images

    def read(self, index: int) -> RawItem:
        if not 0 <= index < self.num_images:
            raise IndexError(f"NYU index {index} out of range 0..{self.num_images - 1}")
        f = self._handle()
        image = np.ascontiguousarray(np.asarray(f["images"][index]).transpose(0, 2, 1))
        depth = np.ascontiguousarray(np.asarray(f["depths"][index], dtype=np.float32).T)
        return image, depth

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None  # never ship an open HDF5 handle to another process
        state["_pid"] = None
        return state


def _validate_mat(f: Any, path: Path) -> tuple[int, int, int]:
    """Check arrays, dtypes and the reversed layout; return (N, H, W)."""
    import h5py

    keys = sorted(k for k in f.keys() if not k.startswith("#"))
    missing = [k for k in ("images", "depths") if not isinstance(f.get(k), h5py.Dataset)]
    if missing:
        raise DatasetError(
            f"{path} lacks the array(s) {', '.join(missing)}; keys present: {', '.join(keys) or 'none'}"
        )
    images, depths = f["images"], f["depths"]
    if images.ndim != 4 or images.shape[1] != 3:
        raise DatasetError(
            f"{path}: 'images' has shape {images.shape}, expected (N, 3, W, H) "
            f"e.g. {OFFICIAL_IMAGES_H5_SHAPE}"
        )
    if images.dtype != np.uint8:
        raise DatasetError(f"{path}: 'images' has dtype {images.dtype}, expected uint8")
    if depths.ndim != 3 or depths.dtype.kind != "f":
        raise DatasetError(
            f"{path}: 'depths' has shape {depths.shape} dtype {depths.dtype}, expected float "
            f"(N, W, H) e.g. {OFFICIAL_DEPTHS_H5_SHAPE}"
        )
    n, _, w, h = images.shape
    if depths.shape != (n, w, h):
        raise DatasetError(
            f"{path}: 'depths' shape {depths.shape} does not match 'images' {images.shape} "
            f"(expected {(n, w, h)})"
        )
    if w < h:
        raise DatasetError(
            f"{path}: 'images' shape {images.shape} looks like (N, 3, H, W); the MATLAB v7.3 "
            f"layout stores axes reversed (N, 3, W, H), e.g. {OFFICIAL_IMAGES_H5_SHAPE}"
        )
    return n, h, w


def load_split(splits_path: str | os.PathLike[str], split: str, num_images: int) -> np.ndarray:
    """0-based int64 indices of ``split`` ('train'|'test') from a classic ``splits.mat``.

    The file stores 1-based MATLAB indices; every index must lie in 1..num_images.
    """
    import scipy.io

    path = Path(splits_path)
    if split not in _SPLIT_KEYS:
        raise DatasetError(f"unknown NYU split {split!r}; use 'test', 'train' or 'all'")
    if not path.is_file():
        raise DatasetError(f"NYU split file not found: {path} (needed for split={split!r})")
    try:
        mat = scipy.io.loadmat(path)
    except (NotImplementedError, ValueError, OSError) as exc:
        raise DatasetError(f"cannot read {path} as a classic MATLAB file: {exc}") from None
    key = _SPLIT_KEYS[split]
    if key not in mat:
        present = ", ".join(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path} lacks '{key}'; keys present: {present or 'none'}")
    raw = np.asarray(mat[key]).reshape(-1)
    if raw.size == 0:
        raise DatasetError(f"{path}: '{key}' is empty")
    one_based = raw.astype(np.int64)
    if not np.array_equal(one_based, raw):
        raise DatasetError(f"{path}: '{key}' holds non-integer indices")
    bad = one_based[(one_based < 1) | (one_based > num_images)]
    if bad.size:
        raise DatasetError(
            f"{path}: '{key}' has {bad.size} index(es) outside 1..{num_images} "
            f"(first: {int(bad[0])}); is it the splits.mat of this .mat file?"
        )
    return one_based - 1


class NyuListReader:
    """RGB / 16-bit depth PNG pairs listed BTS-style (``rgb depth [focal]`` per line).

    ``read(i)`` (0-based line index) returns ``(image uint8 (3, H, W), depth float32 (H, W)
    metres)`` with depth = PNG value / ``depth_scale``. Every listed file is checked to
    exist at construction. ``focals`` holds the per-line focal length in pixels (NaN if absent).
    """

    def __init__(
        self,
        list_file: str | os.PathLike[str],
        data_root: str | os.PathLike[str] | None = None,
        depth_scale: float = 1000.0,
    ) -> None:
        self.list_file = Path(list_file)
        if not self.list_file.is_file():
            raise DatasetError(f"NYU list file not found: {self.list_file}")
        if depth_scale <= 0:
            raise OptionError(f"depth_scale must be > 0, got {depth_scale}")
        self.root = Path(data_root) if data_root is not None else self.list_file.parent
        self.depth_scale = float(depth_scale)
        self.pairs: list[tuple[Path, Path]] = []
        self.focals: list[float] = []
        try:
            text = self.list_file.read_text()
        except UnicodeDecodeError:
            raise DatasetError(f"{self.list_file}: not a text list file (expected lines 'rgb_path depth_path [focal]')") from None
        except OSError as exc:
            raise DatasetError(f"{self.list_file}: cannot be read ({exc.strerror or exc})") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (2, 3):
                raise DatasetError(
                    f"{self.list_file}:{lineno}: expected 'rgb_path depth_path [focal]', got {line!r}"
                )
            try:
                focal = float(parts[2]) if len(parts) == 3 else float("nan")
            except ValueError:
                raise DatasetError(f"{self.list_file}:{lineno}: focal {parts[2]!r} is not a number") from None
            self.pairs.append((self.root / parts[0], self.root / parts[1]))
            self.focals.append(focal)
        if not self.pairs:
            raise DatasetError(f"NYU list file has no entries: {self.list_file}")
        missing = [str(p) for pair in self.pairs for p in pair if not p.is_file()]
        if missing:
            raise DatasetError(
                f"{self.list_file}: {len(missing)} listed file(s) missing under {self.root}, "
                f"first: {missing[0]}"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> RawItem:
        rgb_path, depth_path = self.pairs[index]
        with Image.open(rgb_path) as im:
            image = np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
        with Image.open(depth_path) as im:
            raw = np.asarray(im)
        if raw.ndim != 2:
            raise DatasetError(f"{depth_path}: depth PNG must be single-channel, got shape {raw.shape}")
        depth = raw.astype(np.float32) / np.float32(self.depth_scale)
        if depth.shape != image.shape[1:]:
            raise DatasetError(
                f"{depth_path}: depth {depth.shape} and image {image.shape[1:]} sizes differ"
            )
        return np.ascontiguousarray(image), depth


def find_list_file(directory: Path, split: str = "test") -> Path:
    """Pick the BTS list file in ``directory``: the only ``*.txt``, else the one whose name
    mentions the split (and 'gt' if still ambiguous), e.g. ``nyudepthv2_test_files_with_gt.txt``."""
    txts = sorted(p for p in directory.glob("*.txt") if p.is_file())
    if not txts:
        raise DatasetError(f"no {MAT_NAME} and no *.txt list file in {directory}")
    if len(txts) == 1:
        return txts[0]
    cands = [p for p in txts if split in p.name.lower()] or txts
    if len(cands) > 1:
        cands = [p for p in cands if "gt" in p.name.lower()] or cands
    if len(cands) > 1:
        names = ", ".join(p.name for p in cands)
        raise DatasetError(f"several list files in {directory} ({names}); pass list_file=")
    return cands[0]


class NyuDepth(Dataset):
    """NYU items ``(image float32 [3, H, W] ImageNet-normalised, depth float32 [H, W] metres)``.

    ``indices`` are 0-based positions in ``reader`` (file indices for the .mat, line indices
    for a list). ``raw(i)`` gives the uint8 image and metre depth of item ``i`` unnormalised
    (for visualisation or for a model with its own preprocessing).
    """

    def __init__(
        self,
        reader: NyuMatReader | NyuListReader,
        indices: Sequence[int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.reader = reader
        self.indices = [int(i) for i in indices]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, i: int) -> RawItem:
        return self.reader.read(self.indices[i])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, depth = self.raw(i)
        x = torch.from_numpy(image).to(torch.float32).div_(255.0)
        x = (x - self.mean) / self.std
        return x, torch.from_numpy(depth)


def build_nyu(
    path: str | os.PathLike[str],
    split: str = "test",
    limit: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    list_file: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    depth_scale: float = 1000.0,
) -> NyuDepth:
    """Build the NYU dataset from whichever format ``path`` holds.

    ``path``: the ``.mat`` file (``splits.mat`` beside it), a folder holding
    ``nyu_depth_v2_labeled.mat`` + ``splits.mat``, a BTS list ``.txt``, or a folder holding
    one (auto-detected; ``list_file=`` picks it explicitly). ``split``: 'test' | 'train' |
    'all' for the .mat (ignored for lists, whose file is the split). ``limit``: the first N
    items of the split, in split order. ``depth_scale``: PNG units per metre for lists.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"NYU path not found: {p}")
    mat: Path | None = None
    if p.is_file() and p.suffix.lower() == ".mat":
        mat = p
    elif p.is_dir() and list_file is None and (p / MAT_NAME).is_file():
        mat = p / MAT_NAME
    if mat is not None:
        reader: NyuMatReader | NyuListReader = NyuMatReader(mat)
        if split == "all":
            indices: Sequence[int] = range(len(reader))
        else:
            indices = load_split(mat.parent / SPLITS_NAME, split, len(reader)).tolist()
    else:
        if p.is_file():
            lst, root = p, data_root
        elif list_file is not None:
            lst, root = Path(list_file), data_root if data_root is not None else p
        else:
            lst, root = find_list_file(p, split), data_root if data_root is not None else p
        reader = NyuListReader(lst, root, depth_scale)
        indices = range(len(reader))
    if limit is not None:
        if limit < 0:
            raise OptionError(f"limit must be >= 0, got {limit}")
        indices = list(indices)[:limit]
    return NyuDepth(reader, list(indices), mean, std)
