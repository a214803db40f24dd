"""Chunk sizes for work on full N x N attention maps on a CPU, calibrated where it runs.

The explicit attention path (softmax(q k^T) @ v, taken in the blocks whose map a method
reads) and ToSA's token selector both stream (B, H, N, N) tensors through several ops. At
DeiT-S, batch 32, one map is 30 MB and the selector's hidden map 60 MB, beyond the caches,
and buffers that size are fresh memory mappings that page-fault on every forward. Run a
few images (or query rows) at a time, the same ops keep their intermediates in cache and
reuse the same buffers. How many is best depends on the caches, the core count, the
allocator and the torch build, so no size is written down here: each chunked op is timed
once per machine at a few working-set budgets and the fastest is kept.

* **What is calibrated:** one :class:`ChunkKey` per op and shape: the op ("selector",
  "attention"), the shape that sets its working set (heads, tokens, channels), the dtype,
  and the machine (CPU model and cache sizes, threads, torch version). A budget is the
  bytes of the op's largest intermediate per chunk; 0 (:data:`WHOLE`) means one piece,
  and -1 (:data:`FUSED`) the op's fused path (ToSA's selector: its C++ kernel; the
  explicit attention: PyTorch's fused attention for the output, the logits by a separate
  q k^T), timed against the chunked path like any other candidate. The selector's kernel
  is itself built for two vector widths, and which one runs is a calibration of its own
  (op "selector-kernel"; its values are the vector's bytes, 32 or 64, with no one-piece
  option: ``whole=False``). A choice between named forms of an op is calibrated the same
  way, its value the form's index: the backend of attention with a per-key bias
  (op "biased-attention", :mod:`tosa_bench.kernels.biased_attention`), timed on CUDA too,
  where the key names the card, and the form of ToSA's Triton selector (op
  "selector-triton", CUDA only).
* **How:** :func:`calibrate` runs the op on :data:`CALIBRATION_IMAGES` random images at
  each budget of :data:`CANDIDATE_BYTES` and in one piece, in rotated order for
  :data:`CALIBRATION_ROUNDS` rounds, and keeps the budget with the lowest median time
  (about a second per op and shape). The candidates never hold more than
  ``CALIBRATION_IMAGES`` images, so a large batch still runs in chunks.
* **Where it is kept:** in this process, and in ``cpu-chunks.json`` under
  ``$TOSA_BENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/tosa-bench``, else
  ``~/.cache/tosa-bench`` (an unwritable cache only costs a calibration per process).
  ``tosa-bench calibrate`` shows it and (``--refresh``) redoes it; every measured record
  names the budgets its model used (``cpu_chunks``), and the environment record the
  machine signature and the cache file.
* **When:** at an op's first real call on a CPU for a key. Never while a model is traced
  (the MAC counter) or compiled: those run in one piece, which computes the same values.
  A child process (the CPU-peak reading) is handed its parent's budgets through
  :data:`BUDGETS_ENV`, so it runs what was timed.

On a GPU every chunk would cost its own kernel launches, and large batched kernels are
what GPUs run best, so off the CPU everything runs in one piece (not measured yet: no GPU
was available when this was written).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tosa_bench.host import cpu_model

CACHE_ENV = "TOSA_BENCH_CACHE_DIR"
#: JSON ``{key: bytes}`` a parent process hands its children (see the module docstring)
BUDGETS_ENV = "TOSA_BENCH_CPU_CHUNKS"
CACHE_FILE = "cpu-chunks.json"
CALIBRATION_IMAGES = 8
CALIBRATION_ROUNDS = 7
CANDIDATE_BYTES = tuple(2**p for p in range(17, 26))  # 128 KiB ... 32 MiB per chunk
WHOLE = 0  # the budget meaning "one piece"
FUSED = -1  # the budget meaning "the op's fused path" (see the module docstring)
CALIBRATED = -2  # an op's default argument: "use the budget calibrated for this machine"


@dataclass(frozen=True)
class ChunkKey:
    """What a calibration holds for: an op, its shape and dtype, on this machine (and on
    ``device`` where that is not the CPU: a choice timed on a GPU holds for that GPU)."""

    op: str
    shape: str
    dtype: str
    device: str = "cpu"

    def text(self) -> str:
        return f"{self.op} {self.shape} {self.dtype} | {device_signature(self.device)}"


@dataclass(frozen=True)
class Budget:
    """A chunk budget in bytes (0: one piece, -1: the fused path) and where it came from:
    ``calibrated``, ``cache`` (cpu-chunks.json), ``parent`` (:data:`BUDGETS_ENV`) or
    ``set`` (tests, :func:`set_budget`). ``fallback``: the fastest budget that is not the
    fused path, for calls it cannot take (the selector kernel under autograd)."""

    bytes: int
    source: str
    fallback: int = WHOLE


_memo: dict[str, Budget] = {}
_signature: str | None = None
_generation = 0  # bumped whenever settled budgets may change: lets callers keep their own memo


def generation() -> int:
    """A number that changes whenever this process's settled budgets may change (pinned,
    forgotten, dropped): a module that remembers its choice per shape to skip the lookup
    on every call (ToMe's biased attention, called in every block) keys it by this too."""
    return _generation


def machine_signature() -> str:
    """CPU model, cache sizes, intra-op threads and torch version: what a budget depends
    on besides the op."""
    global _signature
    threads = torch.get_num_threads()
    if _signature is None or not _signature.endswith(f"threads {threads}"):
        _signature = f"{cpu_model() or 'unknown cpu'} | caches {_cache_sizes()} | torch {torch.__version__} | threads {threads}"
    return _signature


def device_signature(device: str | torch.device) -> str:
    """:func:`machine_signature` on the CPU; for a CUDA device the card's name, compute
    capability and CUDA version in front of it (a choice timed on one card is not taken
    for another, and ``drop_machine`` still finds it)."""
    device = torch.device(device)
    if device.type != "cuda":
        return machine_signature()
    props = torch.cuda.get_device_properties(device)
    return f"{props.name} | cc {props.major}.{props.minor} | cuda {torch.version.cuda} | {machine_signature()}"


def _cache_sizes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> str:
    """'L1d 32K L2 1024K L3 32768K' from sysfs; 'unknown' where sysfs has none."""
    parts = []
    for index in sorted(Path(root).glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction":
            parts.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    return " ".join(parts) or "unknown"


def cache_path() -> Path:
    """Where calibrations are kept (see the module docstring)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tosa-bench")
    return Path(root) / CACHE_FILE


def read_cache(path: Path | None = None) -> dict[str, dict]:
    """The calibration file as ``{key text: entry}``; {} when missing or unreadable (a
    damaged file is recalibrated, never trusted)."""
    try:
        data = json.loads((path or cache_path()).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and _is_budget(v.get("bytes")) and _is_budget(v.get("fallback", WHOLE))}


def _is_budget(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= FUSED


def _write_cache(key: str, entry: dict, path: Path | None = None) -> str | None:
    """Add one entry (read, merge, write to a temporary file, rename): concurrent writers
    lose at most each other's new entries, never the file. Returns why it could not be
    written, or None."""
    path = path or cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_cache(path)
        data[key] = entry
        _replace_file(path, data)
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return None


def _parent_budgets() -> dict[str, int]:
    try:
        data = json.loads(os.environ.get(BUDGETS_ENV) or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 2 and all(_is_budget(b) for b in v)}


def set_budget(key: ChunkKey, nbytes: int, fallback: int = WHOLE) -> None:
    """Use ``nbytes`` for ``key`` in this process (tests; a user pinning a size)."""
    global _generation
    _memo[key.text()] = Budget(int(nbytes), "set", fallback)
    _generation += 1


def forget_budgets() -> None:
    """Drop this process's budgets (the next call reads the cache or calibrates again)."""
    global _generation
    _memo.clear()
    _generation += 1


def drop_machine(path: Path | None = None) -> int:
    """Remove every calibration of this machine from the cache (and this process); return
    how many were removed."""
    path = path or cache_path()
    data = read_cache(path)
    mine = machine_signature().split(" | threads")[0]
    keep = {k: v for k, v in data.items() if mine not in k}
    forget_budgets()
    if len(keep) != len(data):
        _replace_file(path, keep)
    return len(data) - len(keep)


def _replace_file(path: Path, data: dict) -> None:
    """Write ``data`` as JSON beside ``path`` and rename it into place (readers see the old
    file or the new one, never half of one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def describe_budget(nbytes: int, op: str = "selector") -> str:
    """'fused kernel' (selector) or 'fused attention + logits' (attention), 'one piece' or
    '2048 KiB chunks'; for the selector kernel's own choice, '64-byte vectors'."""
    if op == "selector-kernel":
        return f"{nbytes}-byte vectors"
    if op == "selector-triton":
        from tosa_bench.kernels.selector_triton import FORMS

        return f"{FORMS[nbytes]} form" if 0 <= nbytes < len(FORMS) else f"form {nbytes}"
    if op == "biased-attention":
        from tosa_bench.kernels.biased_attention import BACKENDS

        return BACKENDS[nbytes] if 0 <= nbytes < len(BACKENDS) else f"backend {nbytes}"
    if nbytes == FUSED:
        return "fused kernel" if op == "selector" else "fused attention + logits"
    return "one piece" if nbytes == WHOLE else f"{nbytes // 1024} KiB chunks"


def known_budgets() -> dict[str, list[int]]:
    """Every budget this process has settled, ``{key text: [bytes, fallback]}`` (for
    :data:`BUDGETS_ENV`)."""
    return {k: [b.bytes, b.fallback] for k, b in _memo.items()}


def budget(key: ChunkKey, runner: Callable[[], Callable[[int], None]], candidates: tuple[int, ...] = CANDIDATE_BYTES,
           whole: bool = True, clock: Callable[[], float] = time.perf_counter) -> Budget:
    """The budget for ``key``: this process's, a parent's, the cache's, or a new
    calibration over ``candidates`` (and one piece unless ``whole`` is False) with
    ``runner()`` (a function that runs the op once at a given budget), timed by ``clock``
    (on a GPU one that waits for the device first), stored in the cache."""
    text = key.text()
    found = _memo.get(text)
    if found is not None:
        return found
    parent = _parent_budgets().get(text)
    if parent is not None:
        found = Budget(parent[0], "parent", parent[1])
    else:
        entry = read_cache().get(text)
        if entry is not None:
            found = Budget(entry["bytes"], "cache", entry.get("fallback", WHOLE))
        else:
            best, medians = calibrate(runner(), candidates=candidates, whole=whole, clock=clock)
            fallback = min((b for b in medians if b != FUSED), key=lambda b: (medians[b], b == WHOLE, b))
            entry = {"bytes": best, "fallback": fallback, "median_ms": {str(b): round(t * 1e3, 4) for b, t in medians.items()},
                     "images": CALIBRATION_IMAGES, "rounds": CALIBRATION_ROUNDS,
                     "calibrated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write_cache(text, entry)
            found = Budget(best, "calibrated", fallback)
    _memo[text] = found
    return found


class CandidateUnavailable(Exception):
    """Raised by a calibration's ``run`` for a candidate that cannot take these inputs
    (e.g. an attention kernel that refuses a mask): it is left out of the timing."""


def calibrate(run: Callable[[int], None], candidates: tuple[int, ...] = CANDIDATE_BYTES, rounds: int = CALIBRATION_ROUNDS,
              clock: Callable[[], float] = time.perf_counter, whole: bool = True) -> tuple[int, dict[int, float]]:
    """Time ``run(budget)`` for each candidate and, unless ``whole`` is False, for one
    piece (:data:`WHOLE`), in an order rotated each round so drift hits all alike, after
    one untimed pass (a candidate whose pass raises :class:`CandidateUnavailable` is left
    out); return the budget with the lowest median seconds and every median. Ties go to
    the smaller budget (less memory)."""
    options = []
    for b in (sorted(set(candidates) - {WHOLE}) + [WHOLE]) if whole else sorted(set(candidates)):  # 0 is a form's index where not whole
        try:
            run(b)
        except CandidateUnavailable:
            continue
        options.append(b)
    if not options:
        raise RuntimeError("calibration: no candidate could run")
    times: dict[int, list[float]] = {b: [] for b in options}
    for r in range(rounds):
        for b in options[r % len(options):] + options[: r % len(options)]:
            t0 = clock()
            run(b)
            times[b].append(clock() - t0)
    medians = {b: statistics.median(ts) for b, ts in times.items()}
    best = min(options, key=lambda b: (medians[b], b == WHOLE, b))
    return best, medians


def device_budget(device: torch.device, key: Callable[[], ChunkKey], runner: Callable[[], Callable[[int], None]],
               candidates: tuple[int, ...] = CANDIDATE_BYTES, whole: bool = True,
               devices: tuple[str, ...] = ("cpu",)) -> Budget | None:
    """The budget an op on ``device`` should use now, or None for one piece (or the op's
    default): on a device type not in ``devices`` (most ops are timed on the CPU only; a
    choice between kernels, such as a backend, is timed on CUDA too), on the meta device,
    and while the model is traced or compiled (see the module docstring)."""
    if device.type not in devices or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    if device.type == "cuda":
        return budget(key(), runner, candidates, whole, clock=_cuda_clock(device))
    return budget(key(), runner, candidates, whole)


def _cuda_clock(device: torch.device) -> Callable[[], float]:
    """A clock that first waits for ``device``'s queued work, so a timed call's kernels
    are inside its window."""
    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return clock


def items_per_chunk(total: int, bytes_per_item: int, budget_bytes: int | None) -> int:
    """Items per chunk: all ``total`` for one piece (None or :data:`WHOLE`), else as many
    as fit in ``budget_bytes`` at ``bytes_per_item`` each (at least one)."""
    if not budget_bytes:
        return total
    return max(1, min(total, budget_bytes // max(1, bytes_per_item)))


class Chunked:
    """Mixin of a module with a chunked CPU op: settles the op's budget (:func:`device_budget`)
    and remembers the ones it used, which :func:`used_by` collects for a record."""

    def chunk_budget(self, device: torch.device, key: Callable[[], ChunkKey], runner: Callable[[], Callable[[int], None]],
                     candidates: tuple[int, ...] = CANDIDATE_BYTES, whole: bool = True,
                     devices: tuple[str, ...] = ("cpu",)) -> Budget | None:
        found = device_budget(device, key, runner, candidates, whole, devices)
        if found is not None:
            self.__dict__.setdefault("chunk_budgets", {})[key().text()] = found
        return found


def used_by(model: torch.nn.Module) -> dict[str, dict]:
    """``{key text: {"bytes", "source", "fallback"}}`` of every budget ``model``'s modules used."""
    out: dict[str, dict] = {}
    for module in model.modules():
        for text, b in getattr(module, "chunk_budgets", {}).items():
            out[text] = {"bytes": b.bytes, "source": b.source, "fallback": b.fallback}
    return out
