"""ImageNet-1k validation set in ImageFolder layout, with DeiT's evaluation transform.

Layout (shared/reference §5): ``DIR/<wnid>/*.JPEG`` or ``DIR/val/<wnid>/*.JPEG``. The class
index of an image is the position of its wnid folder in sorted order, which is what timm
and the DeiT checkpoints were trained with, so no label map is needed.

Unreadable images. A corrupt or truncated file must not abort a 50,000-image run, and it
must not vanish silently either. ``ImageNetVal.__getitem__`` therefore returns an
:class:`Unreadable` sentinel instead of raising (and records it on the dataset object of
the process that read it). Because DataLoader workers run in other processes, whose
records the main process never sees, the bad items also travel with the batch:
:func:`collate_skip_bad` drops them and returns ``Batch(images, labels, unreadable)``,
where ``unreadable`` is an :class:`UnreadableList`: a list of the sentinels (paths and
reasons) whose ``int()`` is their count. That matches the ``(images, targets, n_dropped)``
batch contract of ``tosa_bench.tasks.evaluate``, which sums ``int(batch[2])``. To keep the
paths too, iterate with :func:`iter_batches` (or call
:meth:`ImageNetVal.record_unreadable` on ``batch.unreadable``); the dataset's
``unreadable`` list / ``num_unreadable`` then hold every bad file. Recording is
de-duplicated by path, so a file read twice (in-process and again via the batch, or in a
second pass) counts once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from tosa_bench.errors import DatasetError, OptionError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Batch",
    "ImageNetVal",
    "Unreadable",
    "UnreadableList",
    "build_imagenet",
    "collate_skip_bad",
    "eval_transform",
    "iter_batches",
    "resolve_imagenet_root",
]

#: Per-channel RGB mean/std of ImageNet, on the 0..1 scale (what ToTensor produces).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Errors PIL raises for files it cannot decode: unknown format (UnidentifiedImageError is an
# OSError), truncated data ("image file is truncated"), broken headers, decompression bombs.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _class_dirs(directory: Path) -> list[Path]:
    """Visible sub-folders in sorted order (hidden ones such as ``.ipynb_checkpoints`` are
    not classes)."""
    return sorted(
        (p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _has_direct_images(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return any(e.is_file() and _is_image(e.name) for e in it)


def _has_any_images(folder: Path) -> bool:
    for _, _, files in os.walk(folder):
        if any(_is_image(f) for f in files):
            return True
    return False


def resolve_imagenet_root(path: str | os.PathLike[str]) -> Path:
    """Return the folder whose sub-folders are the classes.

    Accepts ``DIR`` holding ``<wnid>/*.JPEG`` directly, or ``DIR`` holding ``val/<wnid>/...``
    (the usual extracted-ImageNet layout). Raises :class:`DatasetError` when the path is
    missing, not a folder, unreadable, empty, has no class folders, or no images.
    """
    root = Path(path).expanduser()
    try:
        return _resolve_root(root)
    except OSError as err:  # a folder we may not list (permissions), a vanished mount
        raise DatasetError(f"ImageNet path {root}: cannot be read ({err.strerror or err}: {err.filename or root})") from None


def _resolve_root(root: Path) -> Path:
    if not root.exists():
        raise DatasetError(f"ImageNet path not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"ImageNet path is not a directory: {root}")
    if not any(root.iterdir()):
        raise DatasetError(f"ImageNet directory is empty: {root} (expected DIR/<wnid>/*.JPEG or DIR/val/<wnid>/*.JPEG)")
    classes = _class_dirs(root)
    if not any(_has_direct_images(c) for c in classes) and (root / "val").is_dir():
        root = root / "val"
        classes = _class_dirs(root)
    if not classes:
        raise DatasetError(
            f"no class folders in {root} (expected DIR/<wnid>/*.JPEG or DIR/val/<wnid>/*.JPEG)"
        )
    if not any(_has_any_images(c) for c in classes):
        exts = ", ".join(IMG_EXTENSIONS)
        raise DatasetError(f"no images ({exts}) in the {len(classes)} class folders under {root}")
    return root


def eval_transform(
    img_size: int = 224,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> transforms.Compose:
    """DeiT evaluation preprocessing of a PIL RGB image.

    Bicubic resize of the short side to ``int(img_size / crop_pct)`` pixels (256 for 224 at
    0.875; timm's DeiT configs use 0.9 -> 248), centre crop ``img_size`` x ``img_size``,
    scale to 0..1 float32, normalise per channel. Output: float32 tensor [3, img_size, img_size].
    """
    if not 0.0 < crop_pct <= 1.0:
        raise OptionError(f"crop_pct (--crop-pct): expected a ratio in (0, 1], got {crop_pct}")
    resize = int(img_size / crop_pct)
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(img_size),
            transforms.ToTensor(),
            transforms.Normalize(mean=list(mean), std=list(std)),
        ]
    )


@dataclass(frozen=True)
class Unreadable:
    """Sentinel returned by ``ImageNetVal[i]`` for a file PIL cannot decode (picklable, so
    it crosses DataLoader worker boundaries)."""

    index: int
    path: str
    reason: str


class UnreadableList(list):
    """The :class:`Unreadable` items dropped from one batch; ``int()`` gives their count,
    so it can stand where a batch carries ``n_dropped``."""

    def __int__(self) -> int:
        return len(self)


class Batch(NamedTuple):
    """A collated batch: images float32 [B, 3, S, S], labels int64 [B], and the items of
    this batch that were dropped as unreadable (B excludes them; ``int(unreadable)`` is
    their count). When every item was unreadable, images has shape [0] and labels [0]."""

    images: Tensor
    labels: Tensor
    unreadable: UnreadableList


class ImageNetVal(ImageFolder):
    """ImageFolder over an ImageNet-val-style tree; items are ``(image, label)`` with image
    float32 [3, S, S] normalised and label an int (sorted-wnid index), or an
    :class:`Unreadable` sentinel for a file that cannot be decoded.

    Attributes beyond ImageFolder's: ``unreadable`` (paths recorded so far),
    ``unreadable_reasons`` (path -> error text), ``num_unreadable``, ``empty_classes``
    (names of class folders holding no image).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        img_size: int = 224,
        crop_pct: float = 0.875,
        limit: int | None = None,
        expected_classes: int | None = None,
    ) -> None:
        resolved = resolve_imagenet_root(root)
        self.crop_pct = crop_pct  # the geometry of the transform, for object-token masks
        try:
            super().__init__(str(resolved), transform=eval_transform(img_size, crop_pct), allow_empty=True)
        except OSError as err:  # a class folder we may not list
            raise DatasetError(f"ImageNet path {resolved}: cannot be read ({err.strerror or err}: {err.filename or resolved})") from None
        if expected_classes is not None and len(self.classes) != expected_classes:
            raise DatasetError(
                f"{resolved} has {len(self.classes)} class folders but the model expects "
                f"{expected_classes} classes; use a model with {len(self.classes)} classes"
                + (" (the generated shapes set: --model test_tiny)" if len(self.classes) == 10 else "")
            )
        filled = {label for _, label in self.samples}
        #: class folders without a single image: their class can never be scored, which
        #: a reader of top-1 must know (counted and reported, not silently passed over)
        self.empty_classes = [name for i, name in enumerate(self.classes) if i not in filled]
        if limit is not None:
            self.samples = balanced_subset(self.samples, limit)
            self.imgs = self.samples
            self.targets = [t for _, t in self.samples]
        self.img_size = img_size
        self.unreadable_reasons: dict[str, str] = {}

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        """Sorted visible folder names -> indices 0..K-1 (timm's convention)."""
        names = [p.name for p in _class_dirs(Path(directory))]
        return names, {name: i for i, name in enumerate(names)}

    def __getitem__(self, index: int) -> tuple[Tensor, int] | Unreadable:  # type: ignore[override]
        path, label = self.samples[index]
        try:
            with open(path, "rb") as fh:
                img = Image.open(fh)
                img = img.convert("RGB")  # forces the full decode inside the try
        except _DECODE_ERRORS as exc:
            bad = Unreadable(index=index, path=path, reason=f"{type(exc).__name__}: {exc}")
            self.record_unreadable([bad])
            return bad
        return self.transform(img), label

    def record_unreadable(self, items: Sequence[Unreadable]) -> None:
        """Remember unreadable files (idempotent per path)."""
        for item in items:
            self.unreadable_reasons.setdefault(item.path, item.reason)

    @property
    def unreadable(self) -> list[str]:
        """Paths of files found unreadable so far, in the order first seen."""
        return list(self.unreadable_reasons)

    @property
    def num_unreadable(self) -> int:
        return len(self.unreadable_reasons)


def balanced_subset(samples: Sequence[tuple[str, int]], limit: int) -> list[tuple[str, int]]:
    """Deterministic class-balanced subset of ``limit`` samples.

    Round-robin over classes in index (sorted-wnid) order, taking each class's files in
    sorted order, until ``limit`` are chosen or all are used. The result keeps the input
    (class, file) order, so it does not depend on anything but the file names.
    """
    if limit < 0:
        raise OptionError(f"limit must be >= 0, got {limit}")
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(i)
    queues = [sorted(by_class[c], key=lambda i: samples[i][0]) for c in sorted(by_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    return [samples[i] for i in sorted(chosen)]


def build_imagenet(
    root: str | os.PathLike[str],
    img_size: int = 224,
    crop_pct: float = 0.875,
    limit: int | None = None,
    expected_classes: int | None = None,
) -> ImageNetVal:
    """Build the ImageNet-val dataset (see :class:`ImageNetVal`).

    ``limit``: evaluate a class-balanced deterministic subset of that many images.
    ``expected_classes``: the classifier head's output count; a different number of class
    folders raises :class:`DatasetError` (labels would otherwise be silently wrong).
    """
    return ImageNetVal(root, img_size, crop_pct, limit, expected_classes)


def collate_skip_bad(items: Sequence[tuple[Tensor, int] | Unreadable]) -> Batch:
    """Collate ``ImageNetVal`` items, dropping :class:`Unreadable` ones into ``Batch.unreadable``.

    A batch in which every item is unreadable has ``images`` of shape [0] and empty labels.
    """
    good = [it for it in items if not isinstance(it, Unreadable)]
    bad = UnreadableList(it for it in items if isinstance(it, Unreadable))
    if good:
        images = torch.stack([img for img, _ in good])
        labels = torch.tensor([lab for _, lab in good], dtype=torch.int64)
    else:
        images = torch.empty(0)
        labels = torch.empty(0, dtype=torch.int64)
    return Batch(images, labels, bad)


def iter_batches(loader: DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` from a loader made with ``collate_fn=collate_skip_bad``
    (:func:`tosa_bench.data.loader.make_loader`), skipping empty batches and recording
    unreadable files on ``loader.dataset`` (main process)."""
    record = getattr(loader.dataset, "record_unreadable", None)
    for batch in loader:
        if batch.unreadable and record is not None:
            record(batch.unreadable)
        if batch.labels.numel():
            yield batch.images, batch.labels
