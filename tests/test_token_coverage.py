"""BlocksRun: how many of the choosing blocks each patch token ran, checked against
selections counted by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tosa_bench.methods.base import BlockSelection
from tosa_bench.tasks.token_coverage import BlocksRun


def _ran(rows: list[list[int]]) -> BlockSelection:
    return BlockSelection("ran", torch.tensor(rows))


def test_blocks_run_counts_each_patch_by_hand():
    # 4 patches (+ CLS), 2 choosing blocks of k = 2.
    # image 0: patch 1 ran both, patches 2 and 3 one each, patch 4 none;
    # image 1: patches 3 and 4 ran both, patches 1 and 2 none.
    sel = {1: _ran([[0, 1, 2], [0, 3, 4]]), 2: _ran([[0, 1, 3], [0, 3, 4]])}
    counter = BlocksRun()
    counter.update(sel, num_tokens=5)
    out = counter.compute()
    assert out["blocks_run_share"] == [3 / 8, 2 / 8, 3 / 8]
    assert out["choosing_blocks"] == [1, 2]
    assert math.isclose(out["blocks_run_mean"], 2 * 2 / 4)  # K k / (N - 1): every block runs k patches


def test_blocks_run_pools_batches_and_ignores_blocks_that_do_not_choose_runners():
    counter = BlocksRun()
    merged = BlockSelection("merged", torch.tensor([[0, 1, 1, 2, 3]]))
    kept = BlockSelection("kept", torch.tensor([[0, 1]]))
    counter.update({0: merged, 1: _ran([[0, 1, 2]]), 2: _ran([[0, 1, 4]]), 3: kept}, num_tokens=5)
    counter.update({1: _ran([[0, 3, 4]]), 2: _ran([[0, 3, 4]])}, num_tokens=5)
    # batch 1: patch 1 ran 2, patch 2 ran 1, patch 3 ran 0, patch 4 ran 1; batch 2: 3 and 4 ran 2, 1 and 2 ran 0
    assert counter.compute()["blocks_run_share"] == [3 / 8, 2 / 8, 3 / 8]


def test_blocks_run_is_empty_without_choosing_blocks_and_refuses_mixed_blocks():
    counter = BlocksRun()
    counter.update({1: BlockSelection("kept", torch.tensor([[0, 1]]))}, num_tokens=5)
    assert counter.compute() == {"blocks_run_share": None, "blocks_run_mean": None, "choosing_blocks": None}
    counter.update({1: _ran([[0, 1]])}, num_tokens=5)
    with pytest.raises(ValueError, match="choosing blocks changed"):
        counter.update({2: _ran([[0, 1]])}, num_tokens=5)
