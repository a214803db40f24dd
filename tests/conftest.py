"""Test-session hooks. Inert in ordinary runs.

Under mutmut (docs/mutation.md) each mutant runs the tests that reach the mutated function
with ``-x``, in no particular order; a mutant is decided at its first failing test, so
running the fastest tests first (by the durations mutmut recorded in its clean run) decides
most mutants in seconds instead of after the slow model-building tests.

Chunk calibrations (tosa_bench.models.chunks) go to a cache directory of this session's
own, so tests neither read the user's calibrations nor add to them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def pytest_configure(config):
    import tempfile

    from tosa_bench.models.chunks import CACHE_ENV

    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="tosa-bench-test-cache-")


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    try:
        durations = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


@pytest.fixture
def pin_budget(monkeypatch):
    """``pin_budget(b, fallback=WHOLE)`` makes every chunked op ("selector", "attention")
    use budget ``b`` for the rest of the test. The selector kernel's vector width (op
    "selector-kernel") and the biased attention's backend are not chunk budgets: they keep being calibrated (in this session's
    cache directory), so a pinned fused budget runs the kernel as it would run."""
    from tosa_bench.models import chunks

    real = chunks.budget

    def pin(b: int, fallback: int = chunks.WHOLE) -> None:
        def pinned(key, runner, candidates=(), whole=True):
            if key.op in ("selector-kernel", "biased-attention"):  # choices of a kernel, not chunk budgets
                return real(key, runner, candidates, whole)
            return chunks.Budget(b, "set", fallback)

        monkeypatch.setattr(chunks, "budget", pinned)

    return pin


@pytest.fixture
def same_selector_step():
    """``check(a, b)``: two selector state dicts (one training step in one process, and the
    same step split over two) hold the same tensors to float rounding, conv2's bias aside:
    the log-softmax over keys ignores a constant added to a head's row, so the loss has no
    gradient for it. What reaches it is float rounding (~1e-11), which AdamW's
    g / (|g| + eps) turns into a step of any size up to the learning rate, different in one
    process and two (seen on an AVX-512 CPU). It cannot change a selection."""
    import torch

    def check(a: dict, b: dict) -> None:
        assert a.keys() == b.keys() and any(k.endswith("conv2.bias") for k in a)
        for k in a:
            if not k.endswith("conv2.bias"):
                torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")

    return check
