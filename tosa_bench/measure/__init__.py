"""Measurement: MACs (fvcore + our handles), timing, peak memory, environment record.

Names are imported lazily from their submodules (``flops``, ``timing``, ``memory``,
``env``), so ``import tosa_bench.measure`` neither imports torch nor fvcore by itself.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS: dict[str, str] = {
    # flops
    "MacCount": "flops",
    "count_macs": "flops",
    # timing
    "StepTimer": "timing",
    "PerfCounterTimer": "timing",
    "CudaEventTimer": "timing",
    "default_timer": "timing",
    "TimingStats": "timing",
    "Throughput": "timing",
    "measure": "timing",
    "measure_throughput": "timing",
    "measure_latency": "timing",
    # memory
    "MemoryReading": "memory",
    "gpu_peak_tensor_memory": "memory",
    "nvml_process_memory": "memory",
    "nvml_index_for_cuda_device": "memory",
    "cpu_peak_rss": "memory",
    "freed_memory_returned_to_os": "memory",
    "measure_cpu_peak": "cpu_peak",
    # env
    "environment_record": "env",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tosa_bench.measure' has no attribute {name!r}")
    return getattr(import_module(f"tosa_bench.measure.{module}"), name)
