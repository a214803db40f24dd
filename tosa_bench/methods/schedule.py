"""Tokens each block processes, derived from a method's options alone (no forward pass).

This is the independent side of two cross-checks: the counts a model reports after a
forward must equal these, and the analytic MAC formula (tosa_bench.measure.analytic)
is evaluated on them.
"""

from __future__ import annotations

from tosa_bench.methods.base import BlockTokens, TokenReducer, kept_count
from tosa_bench.methods.evit import EViTReducer
from tosa_bench.methods.tome import ToMeReducer, max_merge
from tosa_bench.methods.tosa import ToSAReducer


def expected_token_counts(reducer: TokenReducer, num_tokens: int) -> list[BlockTokens]:
    """Per-block token counts for a bound ``reducer`` at ``num_tokens`` input tokens (CLS
    included)."""
    depth, n = reducer.depth, num_tokens
    if isinstance(reducer, ToSAReducer):
        k = kept_count(reducer.keep, n - 1)
        active = set(reducer.placement) if k < n - 1 else set()
        tosa = BlockTokens(k + 1, k + 1, n, 1 if reducer.importance == "cls" else n) if reducer.uses_maps else BlockTokens(k + 1, k + 1)
        return [tosa if i in active else BlockTokens(n, n) for i in range(depth)]
    if isinstance(reducer, ToMeReducer):
        out = []
        for r in reducer.per_block:
            m = n - min(r, max_merge(n))
            out.append(BlockTokens(n, m))
            n = m
        return out
    if isinstance(reducer, EViTReducer):
        out = []
        for i in range(depth):
            k = kept_count(reducer.keep, n - 1)
            m = k + 1 + int(reducer.fuse) if (i in reducer.locations and k < n - 1) else n
            out.append(BlockTokens(n, m))
            n = m
        return out
    return [BlockTokens(n, n) for _ in range(depth)]
