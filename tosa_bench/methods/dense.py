"""Dense: every block runs on every token. The reference every ratio is taken against.

Its reducer is the base :class:`~tosa_bench.methods.base.TokenReducer`; this file only
declares it to the registry.
"""

from __future__ import annotations

from typing import Any

from tosa_bench.methods.base import TokenReducer
from tosa_bench.methods.registry import DENSE, GridEntry, Knobs, Method, register


class DenseMethod(Method):
    name = DENSE
    display = "Dense"
    order = 0
    colour, marker = "#000000", "*"  # black star: the reference in every figure
    summary = "the unmodified ViT: every block on every token (the reference)"
    keep_meaning = "ignored (dense keeps every token)"

    def reducer(self, **options: Any) -> TokenReducer:
        return TokenReducer(**options)

    def grid_options(self, keep, cfg, knobs: Knobs) -> list[GridEntry]:
        # once per model/batch/dtype/device, whatever the keeps
        return [GridEntry({})] if keep is None else []


METHOD = register(DenseMethod())
