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

Two formulations, one per kernel, chosen by ``form`` (:data:`FORMS`):

- ``"packed"`` (the default, the kernel measured above): for each of conv2's K taps, h is
  recomputed at that shift from K masked loads of x, so a tile costs K*K masked global
  loads and K*K + K products whose reduction dimension is 16 (the lanes, or the hidden
  channels). Profiled on the H100 it runs about 10x above its memory floor, and those
  loads and small products are where the time goes (docs/gpu-selector.md).
- ``"stacked"``: x is loaded once per tile at all 2K-1 shifts u = -(K-1)..K-1 it can be
  read at, stacked along the reduction dimension (row (u, lane) of the tile holds
  x[lane][n + u]). h at all K shifts of conv2 is then ONE product of a block-structured
  conv1 weight (row (s, c), column (u, lane): conv1's tap u - (s - P) + P, zero where
  that tap does not exist) with that tile, and z is ONE product of conv2's taps laid side
  by side with the stacked h. So one masked load instead of K*K, and two products whose
  reduction dimensions are (2K-1) x lanes and K x hidden instead of many of 16; the price
  is larger tiles in registers (see :func:`stacked_tiling`) and multiply-adds with the
  zero blocks of the structured weights. It is UNMEASURED on a GPU: it is only checked
  against the float64 reference through Triton's interpreter. Which form runs on a device
  is to be chosen by timing both there, by the caller; this module does not choose.

Both forms compute the same function with the same dtype rules, write the same per-program
partial sums, and fail the same way (:class:`KernelFailed`, remembered per layout).

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
import torch.nn.functional as F
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
#: the formulations :func:`received` takes: v1, "packed" (the default), and v2, "stacked"
FORMS = ("packed", "stacked")
#: the most elements of the stacked form's hidden tile (float32, all K shifts x hidden
#: channels x keys) worth packing a second query row for: 16 warps hold it at 64 registers a thread
STACKED_HIDDEN_BUDGET = 16 * 32 * 64


@functools.lru_cache(maxsize=None)
def _triton():
    """((the ``triton`` module, {form: its jitted kernel}), None), or (None, the reason
    there is none)."""
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

    @triton.jit
    def stacked(x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, R, N, sxb, sxh, sxr, sxn,
                H: tl.constexpr, L: tl.constexpr, CH: tl.constexpr, HP: tl.constexpr, SX: tl.constexpr,
                HD: tl.constexpr, NP: tl.constexpr, K: tl.constexpr, RP: tl.constexpr, ITER: tl.constexpr):
        # L = RP * H real lanes per shift, CH = RP * C hidden channels per shift; SX and HD
        # are the stacked reduction dimensions, padded to powers of two (>= 16)
        b = tl.program_id(0)
        pr = tl.program_id(1)
        P: tl.constexpr = K // 2
        # the stacked input tile's rows: shift index ui (x read at key n + ui - (K - 1)), lane
        j = tl.arange(0, SX)
        ui = j // L
        lane_in = j - ui * L
        q_in = lane_in // H
        head_in = lane_in - q_in * H
        shift_in = ui - (K - 1)
        stack_ok = ui < 2 * K - 1  # rows past the last shift are padding
        # the stacked hidden tile's rows: conv2's tap s (h read at key n + s - P), channel
        k2 = tl.arange(0, HD)
        s = k2 // CH
        # the output tile's rows: lane = packed row q * H + head
        lane = tl.arange(0, HP)
        q = lane // H
        used = q < RP
        nn = tl.arange(0, NP)
        # block-structured weights, loaded once per program (HD x SX and HP x HD half-precision)
        w1 = tl.load(w1_ptr + k2[:, None] * SX + j[None, :])
        w2 = tl.load(w2_ptr + lane[:, None] * HD + k2[None, :])
        b1 = tl.load(b1_ptr + k2)
        b2 = tl.load(b2_ptr + lane)
        acc = tl.zeros([NP], dtype=tl.float32)
        for i in range(ITER):
            # the key masks are recomputed per tile (integer compares) rather than held across
            # the loop, where they would take SX x NP and HD x NP more registers
            first = pr * (RP * ITER) + i * RP
            row_in = first + q_in
            at_in = nn[None, :] + shift_in[:, None]
            m = (stack_ok & (row_in < R))[:, None] & (at_in >= 0) & (at_in < N)
            x = tl.load(x_ptr + b * sxb + row_in[:, None] * sxr + head_in[:, None] * sxh + at_in * sxn, mask=m, other=0.0)
            h = tl.dot(w1, x) + b1[:, None]  # all K shifts of h at once, float32
            # conv2's zero padding: h at shift s is zero where n + s - P is not a key; rows
            # past the K shifts are padding (zero weights and bias), zeroed here as well
            at_h = nn[None, :] + (s - P)[:, None]
            h = tl.where((s < K)[:, None] & (at_h >= 0) & (at_h < N), tl.maximum(h, 0.0), 0.0)
            z = tl.dot(w2, h.to(w2.dtype)) + b2[:, None]
            z = tl.where((nn < N)[None, :], z, float("-inf"))
            e = tl.exp(z - tl.max(z, axis=1)[:, None])
            p = e / tl.sum(e, axis=1)[:, None]
            ok = used & (first + q < R)
            acc += tl.sum(tl.where(ok[:, None], p, 0.0), axis=0)
        tl.store(out_ptr + (b * tl.num_programs(1) + pr) * NP + nn, acc)

    return (triton, {"packed": kernel, "stacked": stacked}), None


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


class StackedTiling(NamedTuple):
    """How the "stacked" form lays one launch out: ``lanes`` (the output tile's rows:
    packed rows x heads, padded), ``packed`` query rows per tile, ``stacked`` rows of the
    input tile (2K-1 shifts x packed x heads, padded), ``hidden`` rows of the hidden tile
    (K shifts x packed x hidden channels, padded), ``keys`` (padded), ``iters`` tiles per
    program, ``programs`` per image, ``warps`` per program. Every padded size is a power
    of two of at least 16, as Triton's tiles and ``tl.dot`` need."""

    lanes: int
    packed: int
    stacked: int
    hidden: int
    keys: int
    iters: int
    programs: int
    warps: int


def stacked_tiling(heads: int, hidden: int, kernel: int, rows: int, keys: int) -> StackedTiling:
    """The "stacked" form's launch for a selector of ``heads`` -> ``hidden`` channels with
    kernel size ``kernel``, on maps of ``rows`` query rows x ``keys`` keys.

    Rows per tile: the stacked tiles grow with every packed row (the input by 2K-1 lanes
    per head, the hidden by K per channel), and packing rows makes both weights
    block-diagonal over the rows, so the first product multiplies zero blocks that grow
    with the square of the rows packed. Of 1 to the "packed" form's rows per tile, this
    takes the count with the fewest padded multiply-adds of the two products per query row
    and key, ties going to fewer rows (smaller tiles), and packs a second row only while
    the hidden tile stays within :data:`STACKED_HIDDEN_BUDGET` elements. The power-of-two
    padding decides most cases: DeiT-S (6 heads, 12 hidden, kernel 3) takes one row (input
    30 -> 32, hidden 36 -> 64: 3,072 multiply-adds per row and key, against 5,120 for two
    rows in 64 x 128); kernel 1 with 3 heads takes five (15 and 30 lanes fill 16 and 32).
    Not weighed: the softmax, which runs over all ``lanes`` of a tile, so one row of 6
    heads in 16 lanes takes twice the exponentials per row of two rows in 16; timing on the
    device has to judge that.

    Warps: the hidden tile is the largest live value (float32, ``hidden`` x ``keys``), then
    its half-precision copy and the input tile. The warps are chosen so the float32 tile
    comes to at most 64 registers a thread where 4 to 16 warps allow it (DeiT-S at 256
    keys: 64 x 256 over 8 warps; DeiT-B: 128 x 256 over 16). A wider tile (DeiT-B at 512
    keys) gets 128 a thread and may spill; it still runs, and the timing shows the cost.
    Query rows per program as in :func:`tiling`: about ``ROWS``, and never a pass over
    rows that do not exist."""
    lanes = _pad16(heads)
    padded_keys = _pad16(keys)
    best: tuple[int, int, int, int] | None = None  # (packed, stacked, hidden, multiply-adds per tile and key)
    for packed in range(1, lanes // heads + 1):
        stacked, hid = _pad16((2 * kernel - 1) * packed * heads), _pad16(kernel * packed * hidden)
        if packed > 1 and hid * padded_keys > STACKED_HIDDEN_BUDGET:
            break  # the hidden tile only grows with more rows
        cost = (stacked + lanes) * hid  # hidden x stacked for conv1, lanes x hidden for conv2
        if best is None or cost * best[0] < best[3] * packed:  # strictly fewer per row: a tie keeps fewer rows
            best = (packed, stacked, hid, cost)
    assert best is not None
    packed, stacked, hid, _ = best
    iters = max(1, min(ROWS // packed, -(-rows // packed)))
    warps = min(16, max(4, hid * padded_keys // (32 * 64)))
    return StackedTiling(lanes, packed, stacked, hid, padded_keys, iters, -(-rows // (packed * iters)), warps)


def _stacked_weights(conv1: torch.nn.Conv1d, conv2: torch.nn.Conv1d, t: StackedTiling, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The "stacked" kernel's block-structured weights for tiling ``t``: (w1 (hidden x
    stacked), b1 (hidden, float32), w2 (lanes x hidden), b2 (lanes, float32)), zero in
    the padding. Input row (ui, q, head) reads x at key n + ui - (K - 1); hidden row
    (s, q, c) is h at key n + s - P. conv1's tap t reads x at h's key + t - P, so it
    joins shift ui to shift s where ui = s + t (K odd: 2P = K - 1); conv2's tap s reads
    hidden row block s. Packed row q feeds only its own channels (the identity over q).
    Built with a few whole-tensor operations rather than a copy per tap and row, which
    would be K*K*packed small launches on a GPU."""
    w1, w2 = conv1.weight.detach().float(), conv2.weight.detach().float()
    C, H, K = w1.shape
    dev = w1.device
    taps = torch.arange(K, device=dev)
    joins = (torch.arange(2 * K - 1, device=dev)[None, :, None] == taps[:, None, None] + taps[None, None, :]).float()  # [s, ui, t]
    rows = torch.eye(t.packed, device=dev)  # [q, q']
    big1 = torch.einsum("sut,qr,cht->sqcurh", joins, rows, w1).reshape(K * t.packed * C, (2 * K - 1) * t.packed * H)
    big2 = torch.einsum("qr,hcs->qhsrc", rows, w2).reshape(t.packed * H, K * t.packed * C)
    big1 = F.pad(big1, (0, t.stacked - big1.shape[1], 0, t.hidden - big1.shape[0])).to(dtype).contiguous()
    big2 = F.pad(big2, (0, t.hidden - big2.shape[1], 0, t.lanes - big2.shape[0])).to(dtype).contiguous()
    b1 = F.pad(conv1.bias.detach().float().repeat(K * t.packed), (0, t.hidden - K * t.packed * C))
    b2 = F.pad(conv2.bias.detach().float().repeat(t.packed), (0, t.lanes - t.packed * H))
    return big1, b1, big2, b2


def received(logits: Tensor, conv1: torch.nn.Conv1d, conv2: torch.nn.Conv1d, form: str = "packed") -> Tensor:
    """(B, N) float32: the predicted attention each key receives, summed over heads and the
    R query rows of ``logits`` (B, H, R, N), as :meth:`TokenSelector.received` computes
    it, by the kernel of ``form`` (one of :data:`FORMS`; see the module docstring).
    Needs :func:`usable`. Raises :class:`KernelFailed` where Triton cannot compile or fit
    that kernel on this device (once; later calls with that layout raise at once), and
    ValueError for a form not in :data:`FORMS`."""
    if form not in FORMS:
        raise ValueError(f"unknown selector kernel form {form!r}: expected one of {', '.join(map(repr, FORMS))}")
    (triton, kernels), reason = _triton()
    if kernels is None:
        raise RuntimeError(reason)
    B, H, R, N = logits.shape
    C, _, K = conv1.weight.shape
    dtype, dev = logits.dtype, logits.device
    if form == "stacked":
        t = stacked_tiling(H, C, K, R, N)
        weights = lambda: _stacked_weights(conv1, conv2, t, dtype)  # noqa: E731
        layout = dict(L=t.packed * H, CH=t.packed * C, SX=t.stacked, HD=t.hidden, num_warps=t.warps)
    else:
        t = tiling(H, C, R, N)
        weights = lambda: _packed_weights(conv1, conv2, t, dtype)  # noqa: E731
        layout = dict(CP=t.hidden, num_warps=4 if t.keys < 256 else 8)
    key = (str(dev), dtype, form, t, K)
    if key in _failed:  # before building the weights: a layout that failed once is not tried again
        raise KernelFailed(_failed[key])
    with torch.no_grad():
        w1, b1, w2, b2 = weights()
        part = torch.empty(B, t.programs, t.keys, dtype=torch.float32, device=dev)
        try:
            kernels[form][(B, t.programs)](logits, w1, b1, w2, b2, part, R, N, *logits.stride(), H=H, HP=t.lanes, NP=t.keys, K=K,
                                           RP=t.packed, ITER=t.iters, **layout)
        except _launch_errors() as e:
            text = str(e).strip().splitlines()
            _failed[key] = f"the kernel could not run here: {type(e).__name__}: {text[0][:200] if text else ''}".rstrip(": ")
            raise KernelFailed(_failed[key]) from e
        return part.sum(dim=1)[:, :N]


def _packed_weights(conv1: torch.nn.Conv1d, conv2: torch.nn.Conv1d, t: Tiling, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The "packed" kernel's block-diagonal weights for tiling ``t``: packed row q's heads
    q*H.. feed its hidden channels q*C.. (w1 (K, hidden, lanes), b1, w2 (K, lanes, hidden),
    b2; the biases float32)."""
    C, H, K = conv1.weight.shape
    dev = conv1.weight.device
    w1 = torch.zeros(K, t.hidden, t.lanes, dtype=dtype, device=dev)
    w2 = torch.zeros(K, t.lanes, t.hidden, dtype=dtype, device=dev)
    b1 = torch.zeros(t.hidden, dtype=torch.float32, device=dev)
    b2 = torch.zeros(t.lanes, dtype=torch.float32, device=dev)
    for j in range(t.packed):
        w1[:, j * C : (j + 1) * C, j * H : (j + 1) * H] = conv1.weight.permute(2, 0, 1).to(dtype)
        w2[:, j * H : (j + 1) * H, j * C : (j + 1) * C] = conv2.weight.permute(2, 0, 1).to(dtype)
        b1[j * C : (j + 1) * C] = conv1.bias
        b2[j * H : (j + 1) * H] = conv2.bias
    return w1, b1, w2, b2


@torch.library.custom_op("tosa_bench::selector_received_triton", mutates_args=())
def received_op(logits: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, form: str) -> Tensor:
    """:func:`received` as a ``torch.library`` operator taking the convolutions' tensors,
    so a compiled model (``--compile``, CUDA graphs with ``reduce-overhead``) calls the
    kernel inside its graph instead of breaking it there or leaving the selector to the
    compiler's fusion. Used only on maps an eager call ran the kernel on, in the ``form``
    it ran. (B, N) float32."""
    from types import SimpleNamespace

    return received(logits, SimpleNamespace(weight=w1, bias=b1), SimpleNamespace(weight=w2, bias=b2), form)


@received_op.register_fake
def _received_shape(logits: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, form: str) -> Tensor:
    return logits.new_empty(logits.shape[0], logits.shape[-1], dtype=torch.float32)
