"""Slow float64 references for every kernel in :mod:`tosa_bench.kernels`.

Each is written from the operation's definition, with none of the tiling, packing,
chunking or fused softmax of the kernels it checks, so a test that compares a kernel with
it compares two independent computations. They run in float64 on whatever device their
inputs are on and are meant for small inputs only.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def selector_logits(logits: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """ToSA's selector on (B, H, R, N) logits, row by row with ``conv1d`` in float64:
    conv1 (H -> C, kernel k, zero padding k // 2 along the keys), ReLU, conv2 (C -> H):
    the predicted logits, (B, H, R, N) float64."""
    B, H, R, N = logits.shape
    pad = w1.shape[-1] // 2
    rows = logits.double().permute(0, 2, 1, 3).reshape(B * R, H, N)
    hidden = F.relu(F.conv1d(rows, w1.double(), b1.double(), padding=pad))
    z = F.conv1d(hidden, w2.double(), b2.double(), padding=pad)
    return z.reshape(B, R, H, N).permute(0, 2, 1, 3)


def selector_received(logits: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The attention each key is predicted to receive, summed over heads and the R query
    rows: softmax over keys of :func:`selector_logits`, (B, N) float64."""
    return selector_logits(logits, w1, b1, w2, b2).softmax(dim=-1).sum(dim=(1, 2))


def biased_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """softmax(q k^T * scale + bias) v in float64, written out: q, k, v (B, H, n, d), ``bias``
    broadcastable to (B, H, n, n) (ToMe's log-size per key: (B, 1, 1, n)) or None;
    (B, H, n, d) float64."""
    logits = (q.double() * scale) @ k.double().transpose(-2, -1)
    if bias is not None:
        logits = logits + bias.double()
    return logits.softmax(dim=-1) @ v.double()
