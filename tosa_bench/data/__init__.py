"""Dataset layer: ImageNet-val (ImageFolder), NYU Depth V2 (official .mat or BTS PNG list),
and project-generated synthetic stand-ins written in exactly those on-disk formats.

Submodules are imported lazily (PEP 562 ``__getattr__``) so that ``import tosa_bench.data``
(e.g. for :class:`DatasetError` in the CLI) does not pull in torch/torchvision/h5py.
"""

from __future__ import annotations

import importlib
from typing import Any

from tosa_bench.errors import DatasetError
__all__ = [
    "DatasetError",
    "build_imagenet",
    "build_nyu",
    "make_dataset",
    "ImageNetVal",
    "NyuDepth",
]


_LAZY = {
    "build_imagenet": "tosa_bench.data.imagenet",
    "ImageNetVal": "tosa_bench.data.imagenet",
    "build_nyu": "tosa_bench.data.nyu",
    "NyuDepth": "tosa_bench.data.nyu",
    "make_dataset": "tosa_bench.data.synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tosa_bench.data' has no attribute {name!r}")
