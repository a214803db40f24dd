"""The one DataLoader factory of the project (evaluation loops, dataset checks, training).

Why one: evaluation must see the dataset in its own order (so ``limit`` means "the first
N images" and two runs score the same images), while training wants shuffling, a sampler
or dropped last batches. Keeping both behind one function keeps the defaults in one
place: ordered, nothing dropped, no pinned memory, unless the caller asks.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from tosa_bench.errors import OptionError

__all__ = ["make_loader", "default_workers"]


def default_workers() -> int:
    """DataLoader workers when none are given: one per CPU core beyond the first, at most
    8 (0 = load in the main process on a single core). Never more than there are cores,
    so PyTorch has nothing to warn about."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    limit: int | None = None,
    shuffle: bool = False,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` in batches of ``batch_size`` items.

    ``limit``: only the first ``limit`` items in dataset order (all when None; a limit
    past the end is the whole dataset); with ``shuffle`` those N items are shuffled.
    Ordered (no shuffle), last partial batch kept, unless ``shuffle``/``sampler``/
    ``drop_last`` say otherwise (``sampler`` and ``shuffle`` exclude each other, as in
    DataLoader). ``generator`` seeds the shuffling. ``pin_memory``: page-locked batches
    for faster copies to a CUDA device. ``collate_fn`` None is DataLoader's default.

    Raises :class:`~tosa_bench.errors.OptionError` for ``batch_size < 1`` or ``limit < 0``.
    """
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None:
        if limit < 0:
            raise OptionError(f"limit must be >= 0, got {limit}")
        dataset = Subset(dataset, range(min(int(limit), len(dataset))))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
        drop_last=drop_last,
        generator=generator,
    )
