"""How a method's choice spreads over the patches: how many blocks each patch token ran.

ToSA and the random control let every patch keep a feature to the end: a token that is
not chosen bypasses the block unchanged. That feature can be old, though. If a method
chooses the same tokens in every block, the others keep the feature they had before the
first choosing block, however deep the network; a dense-prediction head that reads the
later blocks then sees stale features at those patches. Where the class sits in a few
tokens (classification) that costs little; where every patch matters (depth) it can.

For the blocks that choose which tokens *run* them (``BlockSelection.kind == "ran"``),
:class:`BlocksRun` counts, per patch token of each image, in how many of those K blocks
it ran, and pools the counts over images into the share of patches that ran 0, 1, ... K
of them. Every such block runs exactly k of the N - 1 patches, so the mean is always
K * k / (N - 1) (a check, not a finding); the spread is what differs: a random choice
gives a binomial-like spread, a persistent one piles the patches at 0 and K.

EViT drops tokens for good (``"kept"``) and ToMe merges them; neither lets a token skip a
block and come back, so nothing is counted for them.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch


class BlocksRun:
    """Accumulates, over batches, how many patch tokens ran 0..K of the K choosing blocks."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # (K + 1,) patches that ran 0..K blocks
        self.blocks: tuple[int, ...] | None = None

    def update(self, selections: Mapping[int, Any], num_tokens: int) -> None:
        """``selections``: a reducer's ``last_selection`` (block -> BlockSelection) for one
        batch; ``num_tokens``: N, CLS included. Blocks of another kind are ignored; a batch
        whose choosing blocks differ from the earlier ones' raises ValueError (the counts
        would not add up)."""
        ran = {int(b): s for b, s in selections.items() if s.kind == "ran"}
        if not ran:
            return
        blocks = tuple(sorted(ran))
        if self.blocks is not None and blocks != self.blocks:
            raise ValueError(f"choosing blocks changed between batches: {self.blocks} then {blocks}")
        self.blocks = blocks
        first = ran[blocks[0]].index
        per_patch = torch.zeros(first.shape[0], num_tokens, dtype=torch.long)
        for sel in ran.values():
            per_patch.scatter_add_(1, sel.index.to(torch.long).cpu(), torch.ones_like(sel.index, dtype=torch.long).cpu())
        hist = torch.bincount(per_patch[:, 1:].reshape(-1), minlength=len(blocks) + 1)  # patches only: CLS always runs
        self.counts = hist if self.counts is None else self.counts + hist

    def compute(self) -> dict[str, Any]:
        """``blocks_run_share``: share (0-1) of patch tokens that ran 0, 1, ... K of the
        choosing blocks; ``blocks_run_mean``: their mean count; ``choosing_blocks``: the
        K blocks. All None when no block chose which tokens run (dense, ToMe, EViT)."""
        if self.counts is None:
            return {"blocks_run_share": None, "blocks_run_mean": None, "choosing_blocks": None}
        total = int(self.counts.sum())
        share = [int(c) / total for c in self.counts]
        mean = sum(i * s for i, s in enumerate(share))
        return {"blocks_run_share": share, "blocks_run_mean": mean, "choosing_blocks": list(self.blocks or ())}
