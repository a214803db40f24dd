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

plus what the method adds where it acts, declared by the method itself
(:meth:`tosa_bench.methods.registry.Method.extra_macs`), e.g.

    ToSA selector reading r query rows of an r x n map (r = n for importance "mean",
    r = 1 for "cls"; hidden C, kernel k): conv1 r n C H k + conv2 r n H C k, then the
    softmax of its predicted logits H r n; for "cls" the block before also computes the
    CLS row of its logits, n D
    ToMe merge at n_a tokens: similarity of the two halves ceil(n_a/2) floor(n_a/2) D/H
    EViT pruning at n_a tokens: the CLS row of the logits n_a D and its softmax H n_a

and once per model: patch embedding P D 3 p^2 (a convolutional stem: :func:`stem_macs`), final norm 5 n_out D (n_out = the
tokens the method hands to it: all N for ToSA and random, whose bypassed tokens are put
back; the last block's output for ToMe and EViT), head D C.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from tosa_bench.methods import registry
from tosa_bench.methods.base import BlockTokens, TokenReducer
from tosa_bench.models.configs import ViTConfig, get_config


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


def stem_macs(cfg: ViTConfig, h: int, w: int) -> int:
    """MACs of the patch embedding of one h x w image: one p x p convolution per patch
    ("patch"), or the convolutional stem's three convolutions and two BatchNorms at 2 per
    element ("conv", :class:`~tosa_bench.models.vit.ConvStem`)."""
    D, p = cfg.embed_dim, cfg.patch_size
    patches = (h // p) * (w // p)
    if cfg.stem == "patch":
        return patches * D * 3 * p**2
    h1, w1 = (h + 1) // 2, (w + 1) // 2  # 3x3, stride 2, padding 1
    h2, w2 = (h1 + 1) // 2, (w1 + 1) // 2
    c1, c2 = D // 4, D // 2
    return (h1 * w1 * c1 * (3 * 9 + 2) + h2 * w2 * c2 * (c1 * 9 + 2) + patches * D * c2 * (p // 4) ** 2)


def analytic_macs(cfg: ViTConfig, reducer: TokenReducer, counts: list[BlockTokens], image_hw: tuple[int, int] | None = None) -> AnalyticMacs:
    """Per-image MACs of a model with ``cfg`` run by ``reducer`` with per-block ``counts``
    (from ``model.token_counts`` or ``registry.expected_token_counts``)."""
    method = registry.for_reducer(reducer)
    h, w = image_hw or (cfg.img_size, cfg.img_size)
    patches = (h // cfg.patch_size) * (w // cfg.patch_size)
    D = cfg.embed_dim
    embed = stem_macs(cfg, h, w)
    extras = [method.extra_macs(cfg, reducer, counts, i) for i in range(len(counts))]
    blocks = tuple(block_macs(cfg, t) + inside for t, (inside, _) in zip(counts, extras))
    tail = 5 * method.final_tokens(counts, counts[0].attn) * D + (D * cfg.num_classes if cfg.num_classes > 0 else 0)
    return AnalyticMacs(embed=embed, blocks=blocks, outside=tuple(o for _, o in extras), tail=tail)


@lru_cache(maxsize=4096)
def _config_gmacs(model: str, img_size: int | None, variant: str, options_json: str) -> float:
    cfg = get_config(model, img_size)
    reducer = registry.bound_reducer(cfg, variant, json.loads(options_json))
    return analytic_macs(cfg, reducer, registry.expected_token_counts(reducer, cfg.num_tokens)).gmacs


def analytic_gmacs(model: str, variant: str, options: Mapping[str, Any], img_size: int | None = None) -> float:
    """GMACs per image (1e9 multiply-accumulates) of ``model``/``variant`` with ``options``
    from the closed form alone: no weights, no forward pass, only the method's reducer
    bound to the config (a few small selector convolutions at most). Instant, so
    ``--match gmacs`` can search settings with it; cached per configuration."""
    return _config_gmacs(model, img_size, variant, json.dumps(dict(options), sort_keys=True))
