"""What a measurement point *is*, apart from how it is measured.

A :class:`Point` names everything that changes a measurement's numbers (model, variant
and options, batch, dtype, device, weights, compile); :class:`Settings` says how to
measure it (warm-up, repeats, budget, pairing) and is not part of its identity. Both live
here, with the model factory of a point (:func:`build_point_model`), so that code which
only needs a point's identity (the grid, the store, the child process of
:mod:`tosa_bench.measure.cpu_peak`) does not import the measuring code of
:mod:`tosa_bench.measure.point`, and ``point`` can import ``cpu_peak`` without a cycle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tosa_bench.build import build_model
from tosa_bench.errors import OptionError

MAC_CONVENTION = "GMACs per image: fvcore multiply-accumulates + handles for SDPA/softmax/GELU; LayerNorm 5/elem; GFLOPs = 2 x GMACs"


#: the modes of ``torch.compile`` a point can be measured in ("eager" is no compile)
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")
EAGER = "eager"


def compile_mode(value: Any) -> str | None:
    """A point's compile setting as a mode name, or None for eager. Accepts a mode, "eager"
    / "none" / None / False (eager) and True ("default", what ``compile = true`` meant
    before modes); anything else is an ``OptionError`` naming the modes."""
    if value is None or value is False or value in (EAGER, "none"):
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise OptionError(f"compile: expected {EAGER} or a torch.compile mode ({', '.join(COMPILE_MODES)}), got {value!r}")


def compile_label(record: dict[str, Any]) -> str:
    """How a record's model ran: "eager" or the torch.compile mode (records of older runs
    hold True/False)."""
    try:
        return compile_mode(record.get("compile")) or EAGER
    except OptionError:
        return str(record.get("compile"))


class NonFiniteOutput(RuntimeError):
    """The model produced NaN/Inf: the point is recorded as an error, not measured."""


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; CUDA asked for on a
    machine without one (or a malformed name) is an ``OptionError``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise OptionError(f"device: expected auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"device: {device!r} requested but no CUDA device is visible")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise OptionError(f"device: {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


@dataclass(frozen=True)
class Point:
    """Identity of one measurement: everything that changes its numbers."""

    model: str
    variant: str
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    dtype: str = "fp32"
    device: str = "cpu"
    img_size: int | None = None
    checkpoint: str | None = None
    selector: str | None = None
    #: torch.compile mode ("default", "max-autotune", "reduce-overhead"), or None for
    #: eager; True and False (older runs' files) read as "default" and None
    compile: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "compile", compile_mode(self.compile))

    def config(self) -> dict[str, Any]:
        """Canonical JSON-able form (options sorted, lists for tuples). An eager point
        writes ``compile: false``, as every point did before compile had modes, so the
        hashes of eager points (and the runs that resume by them) stay what they were."""
        d = asdict(self)
        d["options"] = json.loads(json.dumps(self.options, sort_keys=True))
        d["compile"] = self.compile or False
        return d

    def config_hash(self) -> str:
        """Stable 16-hex-digit hash of :meth:`config`."""
        blob = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Settings:
    """How to measure (not part of a point's identity)."""

    timing: bool = True
    latency: bool = True
    memory: bool = True
    # energy per image from a hardware counter (measure.energy), after the throughput
    # phase; needs ``timing``. False: the energy fields are None, "energy = false"
    energy: bool = True
    warmup: int = 10
    repeats: int = 40
    time_budget_s: float | None = None  # throughput phase; latency gets half of it
    paired: bool = True  # time a variant in alternating rounds with its dense twin
    # Paired timing (measure.timing.measure_paired): ``pair_steps`` timed steps of each
    # side per round; at least ``pair_min_rounds`` rounds, at most ``pair_max_rounds``
    # (None: ``repeats``); it stops early once the 95% interval of the speed-up is within
    # +-``pair_target`` of it, or when ``pair_budget_s`` seconds are spent (None: 4 x
    # ``time_budget_s``, or no budget). A speed-up whose interval is wider than
    # +-``noise_threshold`` (or does not reach 95% coverage) is flagged noisy.
    pair_steps: int = 1
    pair_min_rounds: int = 6
    pair_max_rounds: int | None = None
    pair_budget_s: float | None = None
    pair_target: float = 0.02
    noise_threshold: float = 0.05
    # A/A: time dense against a second dense instance too (its speed-up must read 1.00)
    pair_dense: bool = False

    def __post_init__(self) -> None:
        if self.pair_steps < 1:
            raise OptionError(f"pair_steps: timed steps per round must be >= 1, got {self.pair_steps}")
        if self.pair_min_rounds < 2:
            raise OptionError(f"pair_min_rounds: need at least 2 rounds, got {self.pair_min_rounds}")

    @property
    def pair_rounds_max(self) -> int:
        return max(self.pair_min_rounds, self.pair_max_rounds or self.repeats)

    @property
    def pair_budget(self) -> float | None:
        if self.pair_budget_s is not None:
            return self.pair_budget_s or None  # 0: no budget
        return 4 * self.time_budget_s if self.time_budget_s is not None else None


def build_point_model(point: Point):
    """The point's model (weights from its checkpoint/selector, or random), on the CPU."""
    return build_model(point.model, point.variant, checkpoint=point.checkpoint, selector=point.selector, img_size=point.img_size, **point.options)
