"""Share of forward time spent in each block (for the per-block profile table).

Forward pre/post hooks on each block's sub-modules (norm1, attn, norm2, mlp), and a
wrapper around each ToSA selector's ``received`` (the call ToSA's forward makes, whichever
path, PyTorch ops or the fused CPU kernel, runs inside), accumulate wall time per block; the device is synchronised at each hook on
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
    ``{"per_block": [share, ...], "selectors": share, "selectors_per_pass": [share, ...],
    "other": share, "forward_s": mean seconds}`` with shares of the total forward time
    (0..1); a block's share includes its selector's, which ``selectors`` also gives summed
    over blocks. ``selectors_per_pass`` is the same share for each pass on its own (for an
    interval over passes)."""
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
    selected: dict[str, float] = {"s": 0.0}
    wrapped = []
    for name, sel in getattr(model.reducer, "selectors", {}).items():
        wrapped.append(sel)
        sel.received = _timed(sel.received, int(name), spent, selected, sync, clock)
    try:
        with torch.inference_mode(), autocast(dtype, device):
            model(images)
            spent.clear()
            selected["s"] = 0.0
            per_pass = []
            total = 0.0
            for _ in range(passes):
                before = selected["s"]
                sync()
                t0 = clock()
                model(images)
                sync()
                took = clock() - t0
                total += took
                per_pass.append((selected["s"] - before) / took)
    finally:
        for h in handles:
            h.remove()
        for sel in wrapped:
            del sel.received  # the class's method again
    depth = len(model.blocks)
    shares = [spent[i] / total for i in range(depth)]
    return {"per_block": shares, "selectors": selected["s"] / total, "selectors_per_pass": per_pass,
            "other": max(0.0, 1.0 - sum(shares)), "forward_s": total / passes}


def _timed(received: Callable, block: int, spent: dict, selected: dict, sync: Callable[[], None], clock: Callable[[], float]) -> Callable:
    def timed(*args, **kwargs):
        sync()
        t0 = clock()
        out = received(*args, **kwargs)
        sync()
        took = clock() - t0
        spent[block] += took
        selected["s"] += took
        return out

    return timed
