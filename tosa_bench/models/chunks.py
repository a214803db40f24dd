"""Cache-sized chunks for work on full N x N attention maps on a CPU.

The explicit attention path (softmax(q k^T) @ v, taken in the blocks whose map a method
reads) and ToSA's token selector both stream (B, H, N, N) tensors through several ops. At
DeiT-S, batch 32, one such map is 30 MB and the selector's hidden map 60 MB, far beyond the
caches, so each op reads its input back from memory. Run a few images (or rows) at a time,
the same ops keep their intermediates in cache. Measured on the 2-core CPU (torch 2.14.1,
fp32, DeiT-S, batch 32): the explicit attention of one block ~40 -> ~21 ms, one selector
~120 -> ~25 ms (with its channels-last convolutions), with results equal up to float
rounding.

On a GPU every chunk would cost its own kernel launches, and large batched kernels are
what GPUs run best, so off the CPU everything runs in one piece. (That choice is not
measured yet: no GPU was available when this was written.)
"""

from __future__ import annotations

import torch

CPU_CHUNK_BYTES = 2 * 2**20  # working set per chunk: about a core's share of L2 + L3


def chunk_size(total: int, bytes_per_item: int, device: torch.device) -> int:
    """Items per chunk: all ``total`` of them off the CPU; on a CPU as many as fit in
    ``CPU_CHUNK_BYTES`` at ``bytes_per_item`` each (at least one)."""
    if device.type != "cpu":
        return total
    return max(1, min(total, CPU_CHUNK_BYTES // max(1, bytes_per_item)))
