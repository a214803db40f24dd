"""tosa-bench: benchmarking and profiling token reduction (ToSA, ToMe, EViT) in ViTs.

``build_model`` is imported lazily so that ``tosa-bench --help`` does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["build_model", "__version__"]


def __getattr__(name: str):
    if name == "build_model":
        from tosa_bench.build import build_model

        return build_model
    raise AttributeError(f"module 'tosa_bench' has no attribute {name!r}")
