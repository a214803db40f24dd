"""Closed-form MACs of our ViT and every variant, kept beside the fvcore counter
(``flops.py``) and under the same conventions, so each checks the other.

Unit: multiply-accumulates per image (1 fused multiply-add = 1; GFLOPs = 2 x MACs).
Conventions, identical to ``flops.py``: matmuls and convolutions count their products
(biases not counted); LayerNorm 5 per element; softmax, log-softmax and GELU 1 per
element; the attention kernel QK^T and AV (``2 n^2 D``) plus its softmax (``H n^2``);
residual adds, ReLU, exp, reductions, top-k and gather/scatter are not counted.

With n_a tokens entering a block's attention, n_m its MLP, D the width, H heads, M the
MLP width:

    norm1 5 n_a D + qkv 3 n_a D^2 + attention 2 n_a^2 D + softmax H n_a^2 + proj n_a D^2
    + norm2 5 n_m D + fc1 n_m D M + GELU n_m M + fc2 n_m M D

plus, where a method acts:

    ToSA selector reading r query rows of an r x n map (r = n for importance "mean",
    r = 1 for "cls"; hidden C, kernel k): conv1 r n C H k + conv2 r n H C k, then the
    softmax of its predicted logits H r n; for "cls" the block before also computes the
    CLS row of its logits, n D
    ToMe merge at n_a tokens: similarity of the two halves ceil(n_a/2) floor(n_a/2) D/H
    EViT pruning at n_a tokens: the CLS row of the logits n_a D and its softmax H n_a

and once per model: patch embedding P D 3 p^2, final norm 5 n_last D, head D C.
"""

from __future__ import annotations

from dataclasses import dataclass

from tosa_bench.methods.base import BlockTokens, TokenReducer, kept_count
from tosa_bench.methods.evit import EViTReducer
from tosa_bench.methods.tome import ToMeReducer
from tosa_bench.methods.tosa import ToSAReducer
from tosa_bench.models.configs import ViTConfig


@dataclass(frozen=True)
class AnalyticMacs:
    """Per-image MACs.

    embed: patch embedding. blocks[i]: what runs inside block i's modules and its ToSA
    selector module (``blocks.i`` + ``reducer.selectors.i`` in the counter).
    outside[i]: what the method computes for block i outside any module (ToSA's softmax
    of predicted logits, ToMe's matching, EViT's CLS softmax). tail: final norm + head.
    """

    embed: int
    blocks: tuple[int, ...]
    outside: tuple[int, ...]
    tail: int

    @property
    def total(self) -> int:
        return self.embed + sum(self.blocks) + sum(self.outside) + self.tail

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def block_macs(cfg: ViTConfig, t: BlockTokens) -> int:
    """MACs of one transformer block (no method extras) for ``t`` tokens."""
    D, H, M = cfg.embed_dim, cfg.num_heads, cfg.mlp_hidden
    na, nm = t.attn, t.mlp
    attention = 5 * na * D + 3 * na * D * D + 2 * na * na * D + H * na * na + na * D * D
    mlp = 5 * nm * D + nm * D * M + nm * M + nm * M * D
    return attention + mlp


def selector_macs(num_heads: int, hidden: int, kernel: int, n: int, rows: int) -> int:
    """MACs of one ToSA selector module on ``rows`` query rows of n keys (two 1-D convs)."""
    return 2 * rows * n * hidden * num_heads * kernel


def method_macs(cfg: ViTConfig, reducer: TokenReducer, counts: list[BlockTokens], block: int) -> tuple[int, int]:
    """(inside, outside) MACs a method adds to ``block`` on top of :func:`block_macs`."""
    t = counts[block]
    H, D = cfg.num_heads, cfg.embed_dim
    if isinstance(reducer, ToSAReducer):
        inside = outside = 0
        if t.selector:
            sel = reducer.selectors[str(block)]
            inside += selector_macs(H, sel.hidden, sel.kernel, t.selector, t.selector_rows)
            outside += H * t.selector_rows * t.selector
        nxt = counts[block + 1] if block + 1 < len(counts) else None
        if nxt is not None and nxt.selector and not t.selector and nxt.selector_rows == 1:
            inside += t.attn * D  # CLS row of this block's logits, read by the next selector
        return inside, outside
    if isinstance(reducer, ToMeReducer) and t.mlp < t.attn:
        return 0, ((t.attn + 1) // 2) * (t.attn // 2) * cfg.head_dim
    if isinstance(reducer, EViTReducer) and block in reducer.locations and kept_count(reducer.keep, t.attn - 1) < t.attn - 1:
        return t.attn * D, H * t.attn
    return 0, 0


def analytic_macs(cfg: ViTConfig, reducer: TokenReducer, counts: list[BlockTokens], image_hw: tuple[int, int] | None = None) -> AnalyticMacs:
    """Per-image MACs of a model with ``cfg`` run by ``reducer`` with per-block ``counts``
    (from ``model.token_counts`` or ``expected_token_counts``)."""
    h, w = image_hw or (cfg.img_size, cfg.img_size)
    patches = (h // cfg.patch_size) * (w // cfg.patch_size)
    D = cfg.embed_dim
    embed = patches * D * 3 * cfg.patch_size**2
    extras = [method_macs(cfg, reducer, counts, i) for i in range(len(counts))]
    blocks = tuple(block_macs(cfg, t) + inside for t, (inside, _) in zip(counts, extras))
    tail = 5 * counts[-1].mlp * D + (D * cfg.num_classes if cfg.num_classes > 0 else 0)
    return AnalyticMacs(embed=embed, blocks=blocks, outside=tuple(o for _, o in extras), tail=tail)
