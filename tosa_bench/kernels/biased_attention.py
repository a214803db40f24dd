"""Attention with an additive bias per key, on the fastest backend timed on the device.

Why: ToMe's proportional attention adds log(size) of every key to the logits
(Bolya et al., ICLR 2023). On an H100 (DeiT-S, batch 256, fp16, docs/gpu-selector.md) its
biased attention took 197 us per block against dense's 59 us: a bias keeps attention off
FlashAttention, which takes no additive mask, and whichever kernel PyTorch's default
dispatch then picked was 3.3x slower. Several fused kernels do take an additive bias:
PyTorch's memory-efficient attention, cuDNN's attention (Hopper, cuDNN 9), and on a CPU
PyTorch's flash kernel. Which is fastest depends on the card, the driver and the shape,
so each backend the device offers is timed once per device, shape and dtype
(:mod:`tosa_bench.models.chunks`, op "biased-attention"), the fastest runs, and the
record names it (``kernel_paths``).

Backends (:data:`BACKENDS`), all computing softmax(q k^T * scale + bias) v:

- ``explicit``: the logits, their softmax and the product with v as three PyTorch ops
  (the probabilities are written out); the fallback, available everywhere.
- ``sdpa``: ``F.scaled_dot_product_attention`` with the bias as ``attn_mask``, PyTorch's
  own dispatch choosing the kernel (on a CPU its flash kernel, which takes a mask).
- ``sdpa-efficient``, ``sdpa-cudnn`` (CUDA only): the same call held to one backend
  (``torch.nn.attention.sdpa_kernel``); a backend that refuses the inputs is left out of
  the timing, with its reason.

FlexAttention (a ``score_mod`` adding the bias) is not a candidate: it is fast only
compiled, and compiled per token count, and ToMe's blocks see a new token count each
(12 shapes per forward for DeiT-S at r = 8), so the compile time would dwarf the timing.

Under ``torch.compile`` the compiler lowers ``sdpa`` itself, so the compiled forward uses
it and nothing is timed. Every backend is compared with the float64 reference
(:func:`tosa_bench.kernels.reference.biased_attention`) in the tests; on a GPU by
tests/test_gpu_paths.py, which has not run on one yet.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

#: every backend, in the order a tie is broken (earlier wins); a backend's index here is
#: its value in the calibration cache
BACKENDS = ("sdpa", "explicit", "sdpa-efficient", "sdpa-cudnn")
#: what each backend is, for records (``kernel_paths``)
DESCRIPTION = {
    "sdpa": "scaled_dot_product_attention, PyTorch's dispatch",
    "explicit": "explicit softmax",
    "sdpa-efficient": "scaled_dot_product_attention, memory-efficient kernel",
    "sdpa-cudnn": "scaled_dot_product_attention, cuDNN kernel",
}
#: how a record's ``kernel_paths`` names each backend
PATHS = {b: f"biased attention: {b} ({d})" for b, d in DESCRIPTION.items()}
#: the backend used where nothing is timed (compiled, traced, meta)
DEFAULT = "sdpa"


@functools.lru_cache(maxsize=None)
def _pinned() -> dict[str, object]:
    from torch.nn.attention import SDPBackend

    return {"sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}


def candidates(device: torch.device) -> tuple[str, ...]:
    """The backends worth timing on ``device``: every one on CUDA, ``sdpa`` and
    ``explicit`` elsewhere (the pinned ones are CUDA kernels)."""
    return BACKENDS if device.type == "cuda" else BACKENDS[:2]


def attend(backend: str, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale + bias) v by ``backend``: q, k, v (B, H, n, d), ``bias``
    broadcastable to (B, H, n, n) in q's dtype; (B, H, n, d). Raises RuntimeError where a
    pinned backend cannot take these inputs."""
    if backend == "explicit":
        return ((q * scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1) @ v
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    if backend not in _pinned():
        raise ValueError(f"unknown attention backend {backend!r}; known: {', '.join(BACKENDS)}")
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([_pinned()[backend]]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def unavailable_reason(backend: str, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> str | None:
    """Why ``backend`` cannot run these inputs (it is tried once), or None where it can."""
    try:
        with torch.no_grad():
            attend(backend, q, k, v, bias, scale)
    except RuntimeError as e:
        text = str(e).strip().splitlines()
        return f"{backend}: {text[0][:200] if text else type(e).__name__}"
    return None


def usable(device: torch.device, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> tuple[tuple[str, ...], dict[str, str]]:
    """The backends of :func:`candidates` that run these inputs, and why each other does
    not ({backend: reason})."""
    ok, why = [], {}
    for backend in candidates(device):
        reason = unavailable_reason(backend, q, k, v, bias, scale)
        if reason is None:
            ok.append(backend)
        else:
            why[backend] = reason
    return tuple(ok), why
