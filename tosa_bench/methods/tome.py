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

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from tosa_bench.errors import OptionError
from tosa_bench.methods.base import BlockSelection, BlockTokens, ReducerOutput, TokenReducer, gather_tokens, validate_keep
from tosa_bench.methods.registry import GridEntry, Knobs, Method, OptionSpec, register

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
            raise OptionError(f"r: a per-block list needs {depth} entries, got {len(r)}")
        values = list(r)
    else:
        if isinstance(r, bool) or not isinstance(r, int):
            raise OptionError(f"r must be a non-negative integer or a list of them, got {r!r}")
        if schedule == "constant":
            values = [r] * depth
        elif schedule == "decreasing":
            values = [round(2 * r * (depth - 1 - i) / max(depth - 1, 1)) for i in range(depth)]
        else:
            raise OptionError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise OptionError(f"r must be a non-negative integer (per block), got {v!r}")
    return tuple(values)


class ToMeReducer(TokenReducer):
    """ToMe over a plain ViT. Options: ``r`` (int or per-block list), ``prop_attn``
    (default True, as ToMe's timm patch), ``schedule`` ("constant" | "decreasing")."""

    variant = "tome"

    def __init__(self, r: int | Sequence[int] = 8, prop_attn: bool = True, schedule: str = "constant") -> None:
        super().__init__()
        if not isinstance(prop_attn, bool):
            raise OptionError(f"prop_attn must be True or False, got {prop_attn!r}")
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
        self.last_selection = {}
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
                self.last_selection[i] = BlockSelection("merged", source)
            x = blk.feedforward(h)
            counts.append(BlockTokens(n, x.shape[1]))
            if i in collect:
                inter[i] = gather_tokens(x, source)
        self.token_counts = counts
        return ReducerOutput(tokens=x, full=gather_tokens(x, source) if need_full else None, intermediates=inter)


# --------------------------------------------------------------------------- declaration
def tome_r_for_keep(keep: float, num_tokens: int, depth: int) -> int:
    """ToMe's r for a keep ratio: about ``keep`` of the patch tokens are left after the
    last block, r = round((1 - keep)(N - 1) / L) (keep 0.5 on DeiT-S/224: r = 8)."""
    return max(0, round((1.0 - keep) * (num_tokens - 1) / depth))


class ToMeMethod(Method):
    """ToMe declared to the registry."""

    name = "tome"
    display = "ToMe"
    order = 2
    colour, marker = "#0072B2", "s"  # Okabe-Ito blue
    summary = "bipartite soft matching merges r tokens per block (size-weighted), between attention and MLP"
    keep_meaning = "r = round((1 - keep)(N - 1)/L) tokens merged per block, so about keep of the patches are left at the end"
    options = (
        OptionSpec("r", "int | list[int]", 8, "integer >= 0, or one per block", "tokens merged per block"),
        OptionSpec("prop_attn", "bool", True, "true, false", "proportional attention: + log(size) on the logits"),
        OptionSpec("schedule", "str", "constant", ", ".join(SCHEDULES), "constant r, or linear from 2r to 0"),
    )

    def reducer(self, **options: Any) -> ToMeReducer:
        return ToMeReducer(**options)

    def natural_options(self, keep, cfg, knobs: Knobs = Knobs()) -> dict[str, Any]:
        if knobs.tome_r:
            return {"r": knobs.tome_r[0]}
        return {"r": tome_r_for_keep(0.5 if keep is None else validate_keep(keep), cfg.num_tokens, cfg.depth)}

    def grid_options(self, keep, cfg, knobs: Knobs) -> list[GridEntry]:
        # explicit r values are points of their own, not tied to a keep
        if keep is None:
            return [GridEntry({"r": r}) for r in knobs.tome_r]
        return [] if knobs.tome_r else [GridEntry(self.natural_options(keep, cfg, Knobs()))]

    def match_gmacs(self, keep, cfg, knobs, target_gmacs, gmacs_of):
        """A constant r per block, r = 0 .. (N - 1) // 2 (the most a block can merge); the
        r closest to the target wins, ties to the smaller r."""
        best = min((abs(gmacs_of({"r": r}) - target_gmacs), r) for r in range(0, (cfg.num_tokens - 1) // 2 + 1))
        return [({"r": best[1]}, gmacs_of({"r": best[1]}))]

    def token_counts(self, reducer, num_tokens: int) -> list[BlockTokens]:
        out, n = [], num_tokens
        for r in reducer.per_block:
            m = n - min(r, max_merge(n))
            out.append(BlockTokens(n, m))
            n = m
        return out

    def extra_macs(self, cfg, reducer, counts, block: int) -> tuple[int, int]:
        """The matching: similarity of the two halves, ceil(n/2) floor(n/2) D/H (outside)."""
        t = counts[block]
        if t.mlp < t.attn:
            return 0, ((t.attn + 1) // 2) * (t.attn // 2) * cfg.head_dim
        return 0, 0

    def setting_label(self, options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        parts = [f"r={options.get('r')}"]
        if options.get("schedule", "constant") != "constant":
            parts.append(str(options["schedule"]))
        if options.get("prop_attn") is False:
            parts.append("no prop-attn")
        return ", ".join(parts)

    def curve_label(self, options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        # the setting without its r: "", "decreasing", "no prop-attn"
        return self.setting_label(options, record).partition(", ")[2]

    def point_label(self, options: Mapping[str, Any], keep: float | None) -> str:
        r = options.get("r")
        return f"r={','.join(map(str, r)) if isinstance(r, list) else r}" if r is not None else super().point_label(options, keep)


TOME = register(ToMeMethod())
