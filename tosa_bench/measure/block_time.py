"""Share of forward time spent in each block (for the per-block profile table).

Forward pre/post hooks on each block's sub-modules (norm1, attn, norm2, mlp) and on its
ToSA selector accumulate wall time per block; the device is synchronised at each hook on
CUDA so the times belong to the module. Work the method does outside modules (top-k,
gather/scatter, ToMe matching) is the remainder, reported as ``other``. The hooks add
synchronisation, so this is for *shares*, never for throughput; it runs in separate passes
from the throughput measurement.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import torch
from torch import Tensor, nn

from tosa_bench.precision import autocast


def block_time_shares(model: nn.Module, images: Tensor, passes: int = 2, dtype: str = "fp32", clock: Callable[[], float] = time.perf_counter) -> dict[str, object]:
    """Run ``passes`` forwards (after one untimed) and return
    ``{"per_block": [share, ...], "other": share, "forward_s": median-free mean seconds}``
    with shares of the total forward time (0..1)."""
    device = images.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    spent: dict[int, float] = defaultdict(float)
    starts: dict[int, float] = {}
    handles = []

    def watch(block: int, module: nn.Module) -> None:
        key = id(module)

        def pre(_m, _a):
            sync()
            starts[key] = clock()

        def post(_m, _a, _o):
            sync()
            spent[block] += clock() - starts.pop(key)

        handles.extend([module.register_forward_pre_hook(pre), module.register_forward_hook(post)])

    for i, blk in enumerate(model.blocks):
        for part in (blk.norm1, blk.attn, blk.norm2, blk.mlp):
            watch(i, part)
    for name, sel in getattr(model.reducer, "selectors", {}).items():
        watch(int(name), sel)
    try:
        with torch.inference_mode(), autocast(dtype, device):
            model(images)
            spent.clear()
            sync()
            t0 = clock()
            for _ in range(passes):
                model(images)
            sync()
            total = clock() - t0
    finally:
        for h in handles:
            h.remove()
    depth = len(model.blocks)
    shares = [spent[i] / total for i in range(depth)]
    return {"per_block": shares, "other": max(0.0, 1.0 - sum(shares)), "forward_s": total / passes}
