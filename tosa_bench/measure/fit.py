"""Will a forward pass fit in memory? An estimate made before anything is built.

Why: the number of tokens grows with the square of the image side and attention maps
with the square of the tokens, so ``--img-size 4000`` on DeiT-S means 62,501 tokens and
94 GB of attention maps per image and block (6 heads, fp32). Started anyway, such a run swaps for
many minutes inside one huge matrix product, where even Ctrl-C is not seen until the
product ends. Refusing it up front, with the estimate, is the only useful answer.

The estimate (bytes, for one forward of a batch) is deliberately simple and generous to
the run: the parameters, plus the largest block's working set, i.e. the attention
logits and their softmax (``batch x heads x N x N``, twice) and the MLP's hidden
activations (``batch x N x hidden``, twice), at the element size of the dtype. Fused
attention kernels may need less than this, so a run is only refused when the estimate
exceeds all the memory that is available (free RAM from ``/proc/meminfo``, or the free
memory of the CUDA device), never on a guess of a tighter budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tosa_bench.errors import OptionError

BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
GIB = 1024**3


@dataclass(frozen=True)
class Estimate:
    """Tokens per image and the bytes one forward needs (see the module docstring)."""

    tokens: int
    attention_bytes: int
    activation_bytes: int
    param_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.attention_bytes + self.activation_bytes + self.param_bytes


def estimate(cfg, height: int, width: int, batch: int, dtype: str = "fp32") -> Estimate:
    """The estimate for model config ``cfg`` (a ViTConfig) at ``height`` x ``width``
    pixels and ``batch`` images; tokens = patches + the class token."""
    size = BYTES.get(dtype, 4)
    tokens = (height // cfg.patch_size) * (width // cfg.patch_size) + 1
    attention = 2 * batch * cfg.num_heads * tokens * tokens * size
    activations = 2 * batch * tokens * cfg.mlp_hidden * size
    d, hidden = cfg.embed_dim, cfg.mlp_hidden
    params = cfg.depth * (4 * d * d + 2 * d * hidden) * 4  # qkv + proj + MLP, fp32 weights
    return Estimate(tokens, attention, activations, params)


def available_bytes(device: str) -> tuple[int | None, str]:
    """Free memory of ``device`` in bytes and what it is ("free RAM", "free memory of
    cuda:0"); (None, reason) when it cannot be read (then nothing is refused)."""
    if device.startswith("cuda"):
        try:
            import torch

            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free), f"free memory of {device}"
        except Exception as e:  # no driver, no device: the device check reports that
            return None, f"unknown ({type(e).__name__})"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free RAM"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def check_fits(model: str, height: int, width: int, batch: int, dtype: str, device: str, option: str = "--img-size") -> Estimate:
    """OptionError (naming ``option``, the tokens and the estimate against what is free)
    when one forward of ``model`` at this size cannot fit in the device's memory;
    the estimate otherwise."""
    from tosa_bench.models.configs import get_config

    cfg = get_config(model)
    est = estimate(cfg, height, width, batch, dtype)
    free, what = available_bytes(device)
    if free is not None and est.total_bytes > free:
        raise OptionError(
            f"{option} {height if height == width else f'{height}x{width}'}: {model} would see {est.tokens:,} tokens per image; one forward of batch {batch} "
            f"needs about {est.total_bytes / GIB:,.1f} GiB ({est.attention_bytes / GIB:,.1f} GiB of attention maps) but "
            f"{what} is {free / GIB:,.1f} GiB; use a smaller size or batch"
        )
    return est
