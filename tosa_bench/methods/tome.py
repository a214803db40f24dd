"""ToMe: Token Merging (Bolya et al., ICLR 2023; facebookresearch/ToMe), as a baseline.

In every block, between attention and MLP, ``r`` tokens are merged away by bipartite
soft matching (facts from the paper/README, code our own):

- similarity = cosine of the block's keys, averaged over heads;
- tokens alternate into set A (even positions) and set B (odd positions); each A token
  is matched to its most similar B token; the ``r`` best-scoring edges are merged;
- CLS (position 0, in A) is never merged; at most half the tokens (minus CLS) per block;
- merging is a size-weighted mean and sizes are tracked; with ``prop_attn`` the attention
  logits get ``+log(size)`` per key (proportional attention);
- for dense outputs every original token takes the feature of the token it was merged
  into ("unmerge", as ToMe for Stable Diffusion does).

Merging is written as one map: ``new_index`` (B, N) gives, for each current token, the
index of the token it becomes in the merged set. The merge is then a scatter-add over that
map, and the position map of original tokens is composed with it at each block.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from tosa_bench.methods.base import BlockTokens, ReducerOutput, TokenReducer, gather_tokens

SCHEDULES = ("constant", "decreasing")


def max_merge(n_tokens: int, protect_cls: bool = True) -> int:
    """Largest r bipartite matching allows at n tokens (half the unprotected tokens)."""
    return (n_tokens - int(protect_cls)) // 2


def bipartite_matching(metric: Tensor, r: int, protect_cls: bool = True) -> tuple[Tensor, int]:
    """Plan a merge of ``r`` tokens.

    Args:
        metric: (B, N, C) per-token features to compare (keys averaged over heads).
        r: tokens to remove; clipped to :func:`max_merge`.
    Returns:
        new_index: (B, N) long, the merged-set index each token goes to. Unmerged A
            tokens come first in their original order (so CLS stays at 0), then B tokens
            in order; a merged A token points at its B partner.
        n_out: N - r, the merged-set size.
    """
    B, N, _ = metric.shape
    r = min(r, max_merge(N, protect_cls))
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, 0::2], metric[:, 1::2]
    n_a, n_b = a.shape[1], b.shape[1]
    scores = a @ b.transpose(1, 2)
    if protect_cls:
        scores[:, 0, :] = -torch.inf
    best, partner = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    merged, kept = order[:, :r], order[:, r:].sort(dim=-1).values
    n_kept = n_a - r
    a_new = torch.empty(B, n_a, dtype=torch.long, device=metric.device)
    a_new.scatter_(1, kept, torch.arange(n_kept, device=metric.device).expand(B, -1))
    a_new.scatter_(1, merged, n_kept + partner.gather(1, merged))
    new_index = torch.empty(B, N, dtype=torch.long, device=metric.device)
    new_index[:, 0::2] = a_new
    new_index[:, 1::2] = n_kept + torch.arange(n_b, device=metric.device)
    return new_index, N - r


def merge_weighted(x: Tensor, size: Tensor, new_index: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
    """Size-weighted mean of the tokens mapped together: x (B, N, D), size (B, N, 1)
    -> (B, n_out, D), (B, n_out, 1)."""
    B, _, D = x.shape
    idx = new_index.unsqueeze(-1)
    total = x.new_zeros(B, n_out, D).scatter_add_(1, idx.expand(-1, -1, D), x * size)
    new_size = size.new_zeros(B, n_out, 1).scatter_add_(1, idx, size)
    return total / new_size, new_size


def r_schedule(r: int | Sequence[int], depth: int, schedule: str = "constant") -> tuple[int, ...]:
    """Tokens merged per block.

    ``constant``: r in every block. ``decreasing``: linear from 2r in the first block to 0
    in the last (same total as constant). A sequence gives r per block explicitly.
    """
    if isinstance(r, (list, tuple)):
        if len(r) != depth:
            raise ValueError(f"r: a per-block list needs {depth} entries, got {len(r)}")
        values = list(r)
    else:
        if isinstance(r, bool) or not isinstance(r, int):
            raise ValueError(f"r must be a non-negative integer or a list of them, got {r!r}")
        if schedule == "constant":
            values = [r] * depth
        elif schedule == "decreasing":
            values = [round(2 * r * (depth - 1 - i) / max(depth - 1, 1)) for i in range(depth)]
        else:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"r must be a non-negative integer (per block), got {v!r}")
    return tuple(values)


class ToMeReducer(TokenReducer):
    """ToMe over a plain ViT. Options: ``r`` (int or per-block list), ``prop_attn``
    (default True, as ToMe's timm patch), ``schedule`` ("constant" | "decreasing")."""

    variant = "tome"

    def __init__(self, r: int | Sequence[int] = 8, prop_attn: bool = True, schedule: str = "constant") -> None:
        super().__init__()
        if not isinstance(prop_attn, bool):
            raise ValueError(f"prop_attn must be True or False, got {prop_attn!r}")
        r_schedule(r, 1 if not isinstance(r, (list, tuple)) else len(r), schedule)  # validate early
        self.r, self.prop_attn, self.schedule = r, prop_attn, schedule
        self.per_block: tuple[int, ...] = ()

    def bind(self, cfg) -> None:
        super().bind(cfg)
        self.per_block = r_schedule(self.r, cfg.depth, self.schedule)

    def options(self) -> dict:
        return {"r": self.r, "prop_attn": self.prop_attn, "schedule": self.schedule}

    def forward(self, blocks: nn.ModuleList, x: Tensor, collect: tuple[int, ...] = (), need_full: bool = False) -> ReducerOutput:
        B, n0, _ = x.shape
        size = x.new_ones(B, n0, 1)
        source = torch.arange(n0, device=x.device).expand(B, -1)  # original token -> current index
        merged_any = False
        counts, inter = [], {}
        for i, blk in enumerate(blocks):
            bias = size.log().squeeze(-1)[:, None, None, :] if (self.prop_attn and merged_any) else None
            h, att = blk.attention(x, bias=bias)
            n = h.shape[1]
            r = min(self.per_block[i], max_merge(n))
            if r > 0:
                new_index, n_out = bipartite_matching(att.keys.mean(dim=1), r)
                h, size = merge_weighted(h, size, new_index, n_out)
                source = new_index.gather(1, source)
                merged_any = True
            x = blk.feedforward(h)
            counts.append(BlockTokens(n, x.shape[1]))
            if i in collect:
                inter[i] = gather_tokens(x, source)
        self.token_counts = counts
        return ReducerOutput(tokens=x, full=gather_tokens(x, source) if need_full else None, intermediates=inter)
