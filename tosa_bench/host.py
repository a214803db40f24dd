"""Facts about the machine this process runs on, read without importing torch.

Why a module of its own: the environment record (:mod:`tosa_bench.measure.env`) reports
the CPU model, and the chunk calibrations (:mod:`tosa_bench.models.chunks`) key their
budgets by it. Both read it from here, so neither of those modules has to import the other
for it (they used to, in a circle).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_model"]


def cpu_model(cpuinfo_path: str | os.PathLike[str] = "/proc/cpuinfo") -> str | None:
    """The "model name" (x86) / "Model" or "Hardware" (ARM) line of /proc/cpuinfo, else
    ``platform.processor()``, else None."""
    try:
        for line in Path(cpuinfo_path).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None
