"""Precision names -> autocast, in one place for timing, memory, accuracy and the CLI.

``fp32`` runs without autocast; ``fp16`` and ``bf16`` run under ``torch.autocast`` with
fp32 weights. fp16 is refused on a CPU: CPU fp16 autocast is slow and partial, and not
what a GPU fp16 number means. bf16 on a CPU uses CPU autocast.
"""

from __future__ import annotations

import contextlib

import torch

from tosa_bench.errors import OptionError

_AMP: dict[str, torch.dtype | None] = {
    "fp32": None, "float32": None, "float": None,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def resolve_autocast(dtype: str | torch.dtype, device: torch.device | str) -> torch.dtype | None:
    """Autocast dtype for a precision name on ``device`` (None = plain fp32).

    Raises ``OptionError`` (naming ``dtype``) for an unknown name and for fp16 on a CPU.
    """
    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        key = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    else:
        key = str(dtype).lower()
    if key not in _AMP:
        raise OptionError(f"dtype: unknown precision {dtype!r}; use fp32, fp16 or bf16")
    amp = _AMP[key]
    if amp is torch.float16 and device.type == "cpu":
        raise OptionError("dtype: fp16 autocast is not supported on CPU here; use fp32 or bf16 on CPU, fp16 on CUDA")
    return amp


def autocast(dtype: str | torch.dtype, device: torch.device | str) -> contextlib.AbstractContextManager:
    """A fresh context manager running under ``dtype`` on ``device`` (validated as
    :func:`resolve_autocast`)."""
    amp = resolve_autocast(dtype, device)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=amp)
