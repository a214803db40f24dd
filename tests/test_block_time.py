"""Per-block time shares (tosa_bench.measure.block_time) on a counting clock: every
clock read advances one tick, so each timed interval is known exactly."""

from __future__ import annotations

import pytest
import torch

from tosa_bench.build import build_model
from tosa_bench.measure.block_time import block_time_shares
from tosa_bench.models.chunks import FUSED, WHOLE


class Ticks:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("budget", [WHOLE, FUSED])
def test_selector_time_is_counted_whichever_path_runs(pin_budget, budget):
    """The fused kernel never calls the selector module: its time must still be counted,
    once, in the selector's block and in the ``selectors`` share."""
    from tosa_bench.kernels import selector_cpu

    if budget == FUSED and selector_cpu.kernel() is None:
        pytest.skip(f"{selector_cpu.unavailable_reason()} (a build error fails tests/test_selector_cpu_build.py where a toolchain is present)")
    pin_budget(budget)
    m = build_model("test_deep", "tosa", keep=0.5, placement=[2, 5]).eval()
    clock = Ticks()
    shares = block_time_shares(m, torch.randn(2, 3, 32, 32), passes=2, clock=clock)
    total = shares["forward_s"] * 2
    # each selector call: two reads, one tick apart; 2 selectors x 2 passes
    assert shares["selectors"] == pytest.approx(4 / total)
    # per pass: 2 selector ticks of the pass's own forward time (total / 2 each)
    assert shares["selectors_per_pass"] == pytest.approx([2 / (total / 2)] * 2)
    # a block per pass: 4 sub-modules x 1 tick, plus its selector's tick
    per_block = [s * total for s in shares["per_block"]]
    assert per_block == pytest.approx([2 * (4 + (1 if i in (2, 5) else 0)) for i in range(12)])
    assert "received" not in vars(m.reducer.selectors["2"])  # unwrapped again
