"""The one DataLoader factory: ordered by default, limit = first N, training options."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import SequentialSampler, TensorDataset

from tosa_bench.data.loader import make_loader
from tosa_bench.errors import OptionError


def _items(loader) -> list[int]:
    return [int(v) for (batch,) in loader for v in batch]


@pytest.fixture
def data() -> TensorDataset:
    return TensorDataset(torch.arange(10))


def test_ordered_and_complete_by_default(data: TensorDataset) -> None:
    loader = make_loader(data, 4)
    assert _items(loader) == list(range(10))
    assert [len(b) for (b,) in loader] == [4, 4, 2]  # last partial batch kept


def test_limit_is_the_first_items(data: TensorDataset) -> None:
    assert _items(make_loader(data, 3, limit=5)) == [0, 1, 2, 3, 4]
    assert _items(make_loader(data, 3, limit=0)) == []
    assert _items(make_loader(data, 3, limit=99)) == list(range(10))


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 2, "limit": -1}])
def test_bad_batch_size_or_limit(data: TensorDataset, kwargs: dict) -> None:
    with pytest.raises(OptionError):
        make_loader(data, **kwargs)


def test_training_options(data: TensorDataset) -> None:
    shuffled = [_items(make_loader(data, 4, shuffle=True, generator=torch.Generator().manual_seed(s))) for s in (1, 1)]
    assert shuffled[0] == shuffled[1] != list(range(10))  # seeded: reproducible
    assert sorted(shuffled[0]) == list(range(10))
    assert sorted(_items(make_loader(data, 4, limit=6, shuffle=True))) == list(range(6))  # shuffles the first 6
    assert [len(b) for (b,) in make_loader(data, 4, drop_last=True)] == [4, 4]
    assert _items(make_loader(data, 5, sampler=SequentialSampler(range(7)))) == list(range(7))
