"""ToSA's token selector as one fused CPU kernel (``selector_cpu.cpp``), for inference.

Why: run as PyTorch ops, the selector of a "mean"-rule block reads and writes several
(B, H, N, N)-sized tensors (a layout copy for the convolutions, the hidden map, the
predicted logits, their softmax), and oneDNN's convolutions with 6 -> 12 -> 6 channels run
far below the CPU's multiply-add rate. On the 2-core CPU (DeiT-S, batch 16, fp32) that
took ~17-28 ms per selector, about 6x its share of the model's MACs. The kernel takes one
query row at a time through both convolutions, the ReLU, the softmax and the sum into the
row's image, keeping everything in a few KiB of per-thread scratch; it reads each map once
and writes nothing map-sized unless the predicted logits are kept. Measured there: 6-8 ms
(docs/cpu-selector.md has where its time goes, results/README.md the model-level figures).

It computes what :meth:`TokenSelector.received` computes, to float rounding (tests compare
them), without autograd; it computes in float32 (16-bit maps are read into float32). It is compiled on first use, once per machine and
source version (about a minute), with ``torch.utils.cpp_extension`` (a C++ compiler and
ninja are needed); the build goes to torch's extension directory (``$TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``) under a name that includes this machine's signature,
because it is built for the CPU it runs on (``-march=native``). Where it cannot be built the
selector keeps its PyTorch path, and :func:`unavailable_reason` says why. Whether the kernel
or a chunked PyTorch path is used is decided by timing both on the machine
(:mod:`tosa_bench.models.chunks`), never assumed.

The kernel is compiled for two vector widths, 32 and 64 bytes (8 or 16 floats in a
register: AVX2 or AVX-512 on x86; the compiler splits a vector wider than the hardware's),
and which one runs is timed on the machine too (:meth:`TokenSelector.kernel_vector_bytes`),
because it depends on more than the instruction set: on the 2-core AVX-512 AMD EPYC the
64-byte form ran DeiT-S maps 1.5x faster (16 images, 2.1-2.3 ms against 3.3-3.5 ms), while on
an AVX2-only CPU its twelve sums of 64 bytes would need 24 of the 16 vector registers (the
timing decides there too; no such CPU was at hand to measure it).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("selector_cpu.cpp")
#: environment variable that turns the kernel off (any non-empty value): the PyTorch path is used
DISABLE_ENV = "TOSA_BENCH_NO_SELECTOR_KERNEL"
CFLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp")

_module: ModuleType | None = None
_reason: str | None = None
_tried = False


@functools.lru_cache(maxsize=None)
def _build_name() -> str:
    from tosa_bench.models.chunks import machine_signature

    tag = SOURCE.read_bytes() + " ".join(CFLAGS).encode() + machine_signature().split(" | threads")[0].encode()
    return "tosa_bench_selector_" + hashlib.sha256(tag).hexdigest()[:12]


def kernel() -> ModuleType | None:
    """The compiled kernel module, building it on the first call; None where it cannot
    be built or is turned off (:func:`unavailable_reason` says why)."""
    global _module, _reason, _tried
    if _tried:
        return _module
    _tried = True
    if os.environ.get(DISABLE_ENV):
        _reason = f"turned off by {DISABLE_ENV}"
        return None
    import logging

    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "no CUDA runtime found": irrelevant to a CPU extension
    try:
        from torch.utils import cpp_extension

        name = _build_name()
        root = Path(cpp_extension._get_build_directory(name, verbose=False))
        if not any(root.glob(f"{name}*.so")):
            print(f"tosa-bench: compiling ToSA's CPU selector kernel for this machine (once, about a minute) in {root}", file=sys.stderr)
        _module = cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=list(CFLAGS), extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # no compiler, no ninja, a read-only cache: the PyTorch path stays
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        _reason = f"could not build the selector kernel: {first[:300]}"
        _module = None
    finally:
        quiet.setLevel(level)
    return _module


def build_tag() -> str | None:
    """The kernel build's name (source, flags and machine hashed) once it is built, None
    where it cannot be: calibrations that timed the kernel are keyed by it, so a new
    kernel source is timed afresh."""
    return _build_name() if kernel() is not None else None


def unavailable_reason() -> str | None:
    """Why :func:`kernel` gave None (None when it is available or not tried yet)."""
    return _reason


def usable(logits: Tensor) -> bool:
    """Whether the kernel can take these maps: on the CPU, no gradient wanted, float32 or
    a 16-bit float (read into float32: the kernel then computes what the PyTorch path
    computes with less rounding, as autocast does for a softmax)."""
    return logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.bfloat16, torch.float16) and not torch.is_grad_enabled()


def vector_widths() -> tuple[int, ...]:
    """The vector widths (bytes) the built kernel offers, narrowest first; () where it
    cannot be built."""
    mod = kernel()
    return tuple(sorted(mod.vector_bytes())) if mod is not None else ()


def received(logits: Tensor, conv1: torch.nn.Conv1d, conv2: torch.nn.Conv1d, keep_logits: bool,
             vector_bytes: int) -> tuple[Tensor, Tensor | None]:
    """:meth:`TokenSelector.received` by the kernel: (B, N) attention received per key and
    the predicted logits (B, H, R, N) when ``keep_logits``, computed with vectors of
    ``vector_bytes`` (one of :func:`vector_widths`; the same values to float rounding).
    Needs :func:`kernel`."""
    mod = kernel()
    if mod is None:
        raise RuntimeError(unavailable_reason() or "the selector kernel is not available")
    weights = [t.detach().float().contiguous() for t in (conv1.weight, conv1.bias, conv2.weight, conv2.bias)]
    out, z = mod.selector_received(logits.contiguous(), *weights, keep_logits, vector_bytes)  # 16-bit maps widened row by row
    return out, (z.to(logits.dtype) if keep_logits else None)


@torch.library.custom_op("tosa_bench::selector_received", mutates_args=())
def received_op(logits: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, vector_bytes: int) -> Tensor:
    """:func:`received` without the predicted logits, as a ``torch.library`` operator, so a
    compiled model calls the kernel inside its graph: a plain call into an extension would
    break the graph, and the compiler's own fusion of the selector's ops ran ToSA at 0.96x
    of compiled dense where the eager model with this kernel ran 1.16x (2-core CPU,
    batch 8, results/compile-cpu-2core). (B, N) float32."""
    mod = kernel()
    if mod is None:
        raise RuntimeError(unavailable_reason() or "the selector kernel is not available")
    weights = [t.float().contiguous() for t in (w1, b1, w2, b2)]
    return mod.selector_received(logits.contiguous(), *weights, False, vector_bytes)[0]


@received_op.register_fake
def _received_shape(logits: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, vector_bytes: int) -> Tensor:
    return logits.new_empty(logits.shape[0], logits.shape[-1], dtype=torch.float32)

