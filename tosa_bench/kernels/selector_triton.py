"""ToSA's selector on a CUDA device in one Triton kernel: the predicted attention each key
receives, read straight from the previous block's logits.

Why: through PyTorch ops the selector writes and re-reads its hidden activation (2H
channels of N x N per image), its predicted logits and their softmax, each a full-size
tensor, and autocast runs the softmax in float32. On an H100 (DeiT-S, batch 256, fp16,
torch 2.11; ``benchmarks/selector_gpu.py``, docs/gpu-selector.md) one selector took
2.05 ms that way and 1.46 ms as this kernel (0.94 ms per selector inside the model's
forward), and ToSA's "mean" rule went from 0.54x to 0.68x of dense's speed: better, still
far from its 1.30x ideal (the doc says where the rest goes). The kernel reads each query
row of the logits once and keeps everything else on chip.

What it computes, for one query row r of image b (maps x of shape (H, N), heads as
channels, keys along the row), exactly :meth:`TokenSelector.received`'s function:

    h = relu(conv1(x))        # (C, N), zero padding along keys
    z = conv2(h)              # (H, N), zero padding along keys (h is zero outside 0..N-1)
    received[b] += sum over heads of softmax(z, over keys)

Each program takes one image and about ``ROWS`` query rows. A tile is 16 lanes (or the
next power of two above the heads) by the keys, and as many query rows as fit whole are
packed into its lanes (DeiT-S: two rows of 6 heads; DeiT-B: one row of 12), with block-diagonal
weights, so padding lanes cost less. A convolution tap is a small matrix product
(hidden x lanes by lanes x keys) on the tensor cores; conv2 needs h at K shifts, so h is
computed at each shift from x loaded at the matching offsets (the loads hit L1) instead of
shifting registers, which Triton cannot do. Keys are padded to a power of two and masked.
Products take fp16/bf16 operands with float32 accumulation (what cuDNN does under
autocast); the softmax and the sums are float32. Float32 maps go to the PyTorch ops: the
kernel's exact-float32 products ran out of shared memory on an H100 at 197 keys. Each
program writes its partial sums; the wrapper adds them, so the result does not depend on
scheduling.

Used by :meth:`TokenSelector.received` on CUDA when :func:`usable` (no gradient wanted,
the predicted logits not needed, Triton importable, not turned off with
``TOSA_BENCH_NO_GPU_SELECTOR_KERNEL``); else the PyTorch ops run. Tested on the CPU
through Triton's interpreter (``TRITON_INTERPRET=1``, tests/test_selector_triton.py).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
from torch import Tensor

#: environment variable that turns the kernel off (any non-empty value): the PyTorch ops run
DISABLE_ENV = "TOSA_BENCH_NO_GPU_SELECTOR_KERNEL"
#: query rows per program (rounded down to whole packed tiles): 197 rows of DeiT make 13
#: programs per image, 3,328 at batch 256
ROWS = 16
#: the widest padded key axis the kernel takes: 512 (257-512 tokens, e.g. a ViT at 256-352
#: px) keeps a hidden tile of 32 lanes within the registers of 8 warps; wider rows go to
#: the PyTorch ops
MAX_KEYS = 512


@functools.lru_cache(maxsize=None)
def _triton():
    """The ``triton`` module and the compiled kernel, or the reason there is none."""
    try:
        import triton
        import triton.language as tl
    except Exception as e:  # noqa: BLE001  (no triton, or a broken install: the PyTorch ops stay)
        return None, f"triton is not importable: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"

    @triton.jit
    def kernel(x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, R, N, sxb, sxh, sxr, sxn,
               H: tl.constexpr, HP: tl.constexpr, CP: tl.constexpr, NP: tl.constexpr, K: tl.constexpr,
               RP: tl.constexpr, ITER: tl.constexpr):
        b = tl.program_id(0)
        pr = tl.program_id(1)
        P: tl.constexpr = K // 2
        lane = tl.arange(0, HP)  # lane = packed row q * H + head
        q = lane // H
        head = lane - q * H
        used = q < RP
        cc = tl.arange(0, CP)
        nn = tl.arange(0, NP)
        b1 = tl.load(b1_ptr + cc)
        b2 = tl.load(b2_ptr + lane)
        acc = tl.zeros([NP], dtype=tl.float32)
        for i in range(ITER):
            row = pr * (RP * ITER) + i * RP + q
            ok = used & (row < R)
            base = x_ptr + b * sxb + row * sxr + head * sxh
            z = tl.zeros([HP, NP], dtype=tl.float32) + b2[:, None]
            for s in tl.static_range(K):  # conv2's tap s reads h shifted by s - P
                h = tl.zeros([CP, NP], dtype=tl.float32) + b1[:, None]
                for t in tl.static_range(K):  # conv1's tap t at that shift reads x shifted by (s - P) + (t - P)
                    at = nn + (s - P) + (t - P)
                    m = ok[:, None] & ((at >= 0) & (at < N))[None, :]
                    x = tl.load(base[:, None] + at[None, :] * sxn, mask=m, other=0.0)
                    w1 = tl.load(w1_ptr + t * CP * HP + cc[:, None] * HP + lane[None, :])
                    h += tl.dot(w1, x)
                at = nn + (s - P)
                h = tl.where(((at >= 0) & (at < N))[None, :], tl.maximum(h, 0.0), 0.0)  # conv2's zero padding
                w2 = tl.load(w2_ptr + s * HP * CP + lane[:, None] * CP + cc[None, :])
                z += tl.dot(w2, h.to(w2.dtype))
            z = tl.where((nn < N)[None, :], z, float("-inf"))
            e = tl.exp(z - tl.max(z, axis=1)[:, None])
            p = e / tl.sum(e, axis=1)[:, None]
            acc += tl.sum(tl.where(ok[:, None], p, 0.0), axis=0)
        tl.store(out_ptr + (b * tl.num_programs(1) + pr) * NP + nn, acc)

    return (triton, kernel), None


class KernelFailed(RuntimeError):
    """The kernel could not be compiled or launched for these maps on this device (e.g. a
    GPU with less shared memory than an H100): the caller runs the PyTorch ops instead and
    records this message as the reason."""


#: launches that failed, by (device, dtype, tiling, kernel size): tried once per process
_failed: dict[tuple, str] = {}


def _launch_errors() -> tuple[type[BaseException], ...]:
    """Triton's errors for a kernel that does not fit or does not compile on this device;
    anything else is a bug and propagates."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    return (OutOfResources, CompilationError)


def unavailable_reason(logits: Tensor | None = None) -> str | None:
    """Why the kernel will not run (for these maps, when given); None when it will."""
    if os.environ.get(DISABLE_ENV):
        return f"turned off by {DISABLE_ENV}"
    found, reason = _triton()
    if found is None:
        return reason
    if logits is None:
        return None
    if logits.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"maps on {logits.device.type}, not a CUDA device"
    if logits.dtype not in (torch.float16, torch.bfloat16):
        return f"maps of dtype {str(logits.dtype).removeprefix('torch.')} (the kernel takes float16 and bfloat16)"
    if torch.is_grad_enabled() and logits.requires_grad:
        return "a gradient is wanted (the kernel has no backward)"
    if _pad16(logits.shape[-1]) > MAX_KEYS:
        return f"{logits.shape[-1]} keys (the kernel takes up to {MAX_KEYS})"
    return None


def version_or_reason() -> tuple[str | None, str | None]:
    """("triton <version>", None) where the kernel can run, else (None, why not)."""
    reason = unavailable_reason()
    return (None, reason) if reason else (f"triton {_triton()[0][0].__version__}", None)


def usable(logits: Tensor) -> bool:
    """Whether :func:`received` takes these maps (see :func:`unavailable_reason`)."""
    return unavailable_reason(logits) is None


def _pad16(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


class Tiling(NamedTuple):
    """How :func:`received` lays one launch out: ``lanes`` (heads padded, the tile's rows),
    ``packed`` query rows per tile, ``hidden`` lanes of conv1's output (packed x hidden,
    padded), ``keys`` (padded), ``iters`` tiles per program, ``programs`` per image."""

    lanes: int
    packed: int
    hidden: int
    keys: int
    iters: int
    programs: int


def tiling(heads: int, hidden: int, rows: int, keys: int) -> Tiling:
    """The launch for maps of ``rows`` query rows x ``keys`` keys and a selector of
    ``heads`` -> ``hidden`` channels: as many rows as fit whole share a tile (DeiT-S: 2
    rows of 6 heads in 16 lanes), about ``ROWS`` rows per program, and never a pass over
    rows that do not exist (the "cls" rule's single row is one pass)."""
    lanes = _pad16(heads)
    packed = lanes // heads
    iters = max(1, min(ROWS // packed, -(-rows // packed)))
    return Tiling(lanes, packed, _pad16(packed * hidden), _pad16(keys), iters, -(-rows // (packed * iters)))


def received(logits: Tensor, conv1: torch.nn.Conv1d, conv2: torch.nn.Conv1d) -> Tensor:
    """(B, N) float32: the predicted attention each key receives, summed over heads and the
    R query rows of ``logits`` (B, H, R, N), as :meth:`TokenSelector.received` computes
    it. Needs :func:`usable`. Raises :class:`KernelFailed` where Triton cannot compile or
    fit the kernel on this device (once; later calls with that layout raise at once)."""
    (triton, kernel), reason = _triton()
    if kernel is None:
        raise RuntimeError(reason)
    B, H, R, N = logits.shape
    C, _, K = conv1.weight.shape
    t = tiling(H, C, R, N)
    dtype, dev = logits.dtype, logits.device
    key = (str(dev), dtype, t, K)
    if key in _failed:  # before any packing: a layout that failed once is not tried again
        raise KernelFailed(_failed[key])
    with torch.no_grad():
        # block-diagonal weights: packed row q's heads q*H.. feed its hidden channels q*C..
        w1 = torch.zeros(K, t.hidden, t.lanes, dtype=dtype, device=dev)
        w2 = torch.zeros(K, t.lanes, t.hidden, dtype=dtype, device=dev)
        b1 = torch.zeros(t.hidden, dtype=torch.float32, device=dev)
        b2 = torch.zeros(t.lanes, dtype=torch.float32, device=dev)
        for j in range(t.packed):
            w1[:, j * C : (j + 1) * C, j * H : (j + 1) * H] = conv1.weight.permute(2, 0, 1).to(dtype)
            w2[:, j * H : (j + 1) * H, j * C : (j + 1) * C] = conv2.weight.permute(2, 0, 1).to(dtype)
            b1[j * C : (j + 1) * C] = conv1.bias
            b2[j * H : (j + 1) * H] = conv2.bias
        part = torch.empty(B, t.programs, t.keys, dtype=torch.float32, device=dev)
        try:
            kernel[(B, t.programs)](logits, w1, b1, w2, b2, part, R, N, *logits.stride(), H=H, HP=t.lanes, CP=t.hidden, NP=t.keys,
                                    K=K, RP=t.packed, ITER=t.iters, num_warps=4 if t.keys < 256 else 8)
        except _launch_errors() as e:
            text = str(e).strip().splitlines()
            _failed[key] = f"the kernel could not run here: {type(e).__name__}: {text[0][:200] if text else ''}".rstrip(": ")
            raise KernelFailed(_failed[key]) from e
        return part.sum(dim=1)[:, :N]


@torch.library.custom_op("tosa_bench::selector_received_triton", mutates_args=())
def received_op(logits: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """:func:`received` as a ``torch.library`` operator taking the convolutions' tensors,
    so a compiled model (``--compile``, CUDA graphs with ``reduce-overhead``) calls the
    kernel inside its graph instead of breaking it there or leaving the selector to the
    compiler's fusion. Used only on maps an eager call ran the kernel on. (B, N) float32."""
    from types import SimpleNamespace

    return received(logits, SimpleNamespace(weight=w1, bias=b1), SimpleNamespace(weight=w2, bias=b2))


@received_op.register_fake
def _received_shape(logits: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    return logits.new_empty(logits.shape[0], logits.shape[-1], dtype=torch.float32)
