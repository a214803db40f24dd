"""EViT: token reorganisation by CLS attention (Liang et al., ICLR 2022; youweiliang/evit),
as a baseline.

At each block in ``locations`` (default the 4th, 7th and 10th of 12, i.e. 0-based 3, 6,
9), after attention and before the MLP:

- attentiveness of a patch token = attention the CLS query gives it, averaged over heads
  (only that row of logits is computed, beside the fused attention kernel);
- the ceil(keep * (n - 1)) most attentive of the n - 1 current non-CLS tokens are kept
  (n = tokens entering that block, so keep compounds over locations, as in EViT);
- with ``fuse`` (default True) the others are summed into one extra token weighted by
  their CLS attention (raw weights, not renormalised, as EViT does); a fused token from an
  earlier location competes like any other token.

For dense outputs a dropped token keeps the feature it had when it was dropped (after
that block's attention); fused tokens have no position of their own and are left out.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from tosa_bench.methods.base import (
    BlockTokens,
    ReducerOutput,
    TokenReducer,
    gather_tokens,
    kept_count,
    scatter_tokens,
    validate_block_indices,
    validate_keep,
)


def default_locations(depth: int) -> tuple[int, ...]:
    """EViT's 4th/7th/10th of 12 blocks, scaled to other depths (0-based)."""
    return tuple(sorted({max(1, depth * f // 12) for f in (3, 6, 9)}))


class EViTReducer(TokenReducer):
    """EViT over a plain ViT. Options: ``keep``, ``locations`` (0-based), ``fuse``."""

    variant = "evit"

    def __init__(self, keep: float = 0.7, locations: Sequence[int] | None = None, fuse: bool = True) -> None:
        super().__init__()
        self.keep = validate_keep(keep)
        if not isinstance(fuse, bool):
            raise ValueError(f"fuse must be True or False, got {fuse!r}")
        self.fuse = fuse
        self.locations_spec = locations
        self.locations: tuple[int, ...] = ()

    def bind(self, cfg) -> None:
        super().bind(cfg)
        spec = default_locations(cfg.depth) if self.locations_spec is None else list(self.locations_spec)
        if not spec:
            raise ValueError("locations: no block selected")
        self.locations = validate_block_indices("locations", spec, cfg.depth)

    def options(self) -> dict:
        return {"keep": self.keep, "locations": list(self.locations), "fuse": self.fuse}

    def forward(self, blocks: nn.ModuleList, x: Tensor, collect: tuple[int, ...] = (), need_full: bool = False) -> ReducerOutput:
        B, n0, D = x.shape
        track = need_full or bool(collect)
        # position[b, j]: original index of current token j (0 = CLS); n0 marks a fused token.
        position = torch.arange(n0, device=x.device).expand(B, -1)
        store: Tensor | None = None  # (B, n0 + 1, D) last features of dropped tokens; row n0 is a bin
        counts, inter = [], {}

        def full_map(cur: Tensor) -> Tensor:
            if store is None:
                return cur
            return scatter_tokens(store, position, cur)[:, :n0]

        for i, blk in enumerate(blocks):
            n = x.shape[1]
            k = kept_count(self.keep, n - 1)
            prune = i in self.locations and k < n - 1
            h, att = blk.attention(x, need_logits="cls" if prune else False)
            if prune:
                cls_attn = att.logits[:, :, 0, :].softmax(dim=-1)[:, :, 1:].mean(dim=1)  # (B, n-1)
                order = cls_attn.argsort(dim=1, descending=True, stable=True)
                keep_idx = order[:, :k].sort(dim=1).values + 1
                drop_idx = order[:, k:] + 1
                idx = torch.cat([keep_idx.new_zeros(B, 1), keep_idx], dim=1)
                if track:
                    if store is None:
                        store = h.new_zeros(B, n0 + 1, D)
                    store = scatter_tokens(store, position.gather(1, drop_idx), gather_tokens(h, drop_idx))
                parts = [gather_tokens(h, idx)]
                new_position = [position.gather(1, idx)]
                if self.fuse:
                    weight = cls_attn.gather(1, drop_idx - 1).unsqueeze(-1)
                    parts.append((gather_tokens(h, drop_idx) * weight).sum(dim=1, keepdim=True))
                    new_position.append(position.new_full((B, 1), n0))
                h = torch.cat(parts, dim=1)
                position = torch.cat(new_position, dim=1)
            x = blk.feedforward(h)
            counts.append(BlockTokens(n, x.shape[1]))
            if i in collect:
                inter[i] = full_map(x)
        self.token_counts = counts
        return ReducerOutput(tokens=x, full=full_map(x) if need_full else None, intermediates=inter)
