"""The hand-written and hand-chosen kernels the methods call, in one place.

Each kernel has a float64 reference in :mod:`tosa_bench.kernels.reference` that its tests
compare it with, and a fallback it runs where it cannot (named in a record's
``kernel_paths`` with the reason):

- :mod:`.selector_cpu` (+ ``selector_cpu.cpp``): ToSA's selector as one fused C++ kernel
  for CPU inference; fallback: the selector's PyTorch ops, in calibrated chunks.
- :mod:`.selector_triton`: ToSA's selector as one Triton kernel on CUDA (fp16/bf16
  maps); fallback: the selector's PyTorch ops.
- :mod:`.biased_attention`: attention with an additive per-key bias (ToMe's
  proportional attention) on the fastest backend timed on the device; fallback: the
  explicit softmax.

The methods (:mod:`tosa_bench.methods`) hold the algorithms and call these; nothing here
knows which method it serves beyond the shapes it takes.
"""
