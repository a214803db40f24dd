"""Suites: a whole sweep described in one TOML file (``tosa-bench sweep --suite FILE``).

Schema (every section and key optional; missing keys take the defaults of :class:`Suite`,
which are the default run ``tosa-bench sweep``, also shipped as ``suites/quick.toml``)::

    [suite]
    name = "quick"              # names the run directory
    description = "..."
    points = 5                  # grid size the file stands for (checked by the tests)

    [grid]                      # lists multiply (a cartesian grid)
    models = ["deit_small_patch16_224"]
    variants = ["dense", "tosa", "tome", "evit", "random"]
    keeps = [0.5]               # share of tokens kept, mapped per variant (Method.natural_options, methods/registry.py)
    placements = []             # tosa/random only: schemes ("alternate") or [3, 5, 7]; [] = default
    tome_r = []                 # explicit ToMe r values (replace the keep mapping for tome)
    evit_locations = []         # EViT pruning blocks, e.g. [[3, 6, 9]]; [] = default
    batch_size = {cpu = 8, cuda = 64}   # an int, a list, or a table per device type
    dtypes = ["fp32"]           # fp32 | fp16 | bf16; a list or a table per device type
    devices = ["auto"]          # auto | cpu | cuda | cuda:N
    img_size = 224              # optional input side in pixels (default: the model's)
    match = "none"              # "gmacs": ToMe/EViT at ToSA's GMACs (Method.match_gmacs, methods/registry.py)
    seed = 0                    # seed of the random control
    importance = "mean"         # ToSA importance rule: "mean" (heads and queries) or "cls"
    fuse = true                 # EViT: fuse the dropped tokens into one (false: drop them)
    compile = ["eager"]         # eager and/or torch.compile modes: "default", "max-autotune",
                                # "reduce-overhead"; a list gives a point of each (true = "default")

    [weights]                   # a path for every model, or a table model -> path
    checkpoint = "deit_s.pth"   # or {deit_small_patch16_224 = "deit_s.pth"}
    selector = "selectors.safetensors"   # trained ToSA selectors (tosa points only)
    depth_checkpoint = "depth.pth"       # DepthModel weights, for [data] nyu

    [data]
    imagenet = "/data/imagenet"  # ImageFolder val tree -> top1/top5 per point
    nyu = "/data/nyu"           # NYU .mat / folder / BTS list -> depth metrics per point
    limit = 500                 # evaluate the first N (class-balanced for ImageNet)
    eval_batch_size = 64        # default: the point's batch size
    num_workers = 1             # DataLoader workers (default: CPU cores - 1, at most 8)
    depth_input = [480, 640]    # model input (h, w) for depth; default: GT size rounded

    [measure]                   # how to measure (Settings), not part of a point's identity
    timing = true
    latency = true
    memory = true
    energy = true               # J/image from NVML (GPU) or RAPL (CPU); needs timing
    warmup = 3                  # steps
    repeats = 20                # timed steps at most
    time_budget_s = 2.5         # seconds per timing phase (warm-up included); 0: none
    pair_min_rounds = 12        # paired timing (variant vs dense twin): rounds at least,
    pair_budget_s = 15.0        # seconds at most (0: none); it stops
                                # earlier once the speed-up's 95% interval is within +-2%
    noise_threshold = 0.05      # a speed-up whose 95% interval is wider than +-5% is flagged noisy
    pair_dense = false          # A/A: time dense against a second dense instance too (reads 1.00)

    [gate]                      # tosa-bench check: relative tolerance per ratio metric (default 0.10)
    tolerance = {speedup = 0.10, peak_mem_ratio = 0.10}
    remeasure_budget_s = 60.0   # seconds (wall time) the gate may spend measuring again the
                                # points it cannot judge (verdict noisy; with --update-baseline:
                                # speed-ups wider than +-noise_threshold); 0: never

Relative paths in a suite file resolve against the file's folder (on the command line:
against the current directory); paths are stored absolute. A resolved suite (a run's
``suite.toml``) adds ``[run]`` and ``[[points]]``; :func:`load_suite` ignores those.
Any malformed entry raises :class:`SuiteError` naming the file, the key and what was
expected.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from tosa_bench.errors import SuiteError
from tosa_bench.measure.spec import COMPILE_MODES, EAGER, Settings
from tosa_bench.methods import registry
from tosa_bench.methods.tosa import IMPORTANCE_RULES

DTYPE_NAMES = ("fp32", "fp16", "bf16")
DEVICE_TYPES = ("cpu", "cuda")
MATCH_MODES = ("none", "gmacs")
SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"  # package data (suites/ in the checkout links here)


@dataclass(frozen=True)
class Suite:
    """A whole sweep: the grid, whole-run weights and data, and measurement settings.

    Defaults are the default run (``tosa-bench sweep``): DeiT-S at 224, every variant at
    keep 0.5, batch 8 on a CPU (64 on CUDA), fp32, a 2.5 s timing budget per phase.
    """

    name: str = "quick"
    description: str = "DeiT-S/224, every variant at keep 0.5 (the default run)"
    points: int | None = None
    # grid
    models: tuple[str, ...] = ("deit_small_patch16_224",)
    variants: tuple[str, ...] = field(default_factory=registry.builtin_names)
    keeps: tuple[float, ...] = (0.5,)
    placements: tuple[str | tuple[int, ...], ...] = ()
    tome_r: tuple[int, ...] = ()
    evit_locations: tuple[tuple[int, ...], ...] = ()
    batch_size: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: {"cpu": (8,), "cuda": (64,)})
    dtypes: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {"cpu": ("fp32",), "cuda": ("fp32",)})
    devices: tuple[str, ...] = ("auto",)
    img_size: int | None = None
    match: str = "none"
    seed: int = 0
    importance: str = "mean"
    fuse: bool = True
    compile: tuple[str, ...] = (EAGER,)
    # weights: model name or "*" (every model) -> path
    checkpoint: Mapping[str, str] = field(default_factory=dict)
    selector: Mapping[str, str] = field(default_factory=dict)
    depth_checkpoint: Mapping[str, str] = field(default_factory=dict)
    # data
    imagenet: str | None = None
    nyu: str | None = None
    limit: int | None = None
    eval_batch_size: int | None = None
    num_workers: int | None = None  # None: data.loader.default_workers() (CPU cores - 1, at most 8)
    depth_input: tuple[int, int] | None = None
    # measure
    timing: bool = True
    latency: bool = True
    memory: bool = True
    energy: bool = True
    warmup: int = 3
    repeats: int = 20
    time_budget_s: float | None = 2.5
    pair_min_rounds: int = 12
    pair_budget_s: float | None = 15.0
    noise_threshold: float = 0.05
    pair_dense: bool = False
    # gate: ratio metric -> relative tolerance (tosa_bench.results.compare); seconds the
    # gate may spend re-measuring what it cannot judge (tosa_bench.results.check)
    tolerance: Mapping[str, float] = field(default_factory=dict)
    remeasure_budget_s: float = 60.0
    source: str | None = None

    def settings(self) -> Settings:
        """The measurement settings every record of this suite states."""
        return Settings(
            timing=self.timing, latency=self.latency, memory=self.memory, energy=self.energy,
            warmup=self.warmup, repeats=self.repeats, time_budget_s=self.time_budget_s,
            pair_min_rounds=self.pair_min_rounds, pair_budget_s=self.pair_budget_s, noise_threshold=self.noise_threshold,
            pair_dense=self.pair_dense,
        )

    def with_overrides(self, **changes: Any) -> "Suite":
        """Copy with the given fields replaced (None values ignored), re-validated."""
        given = {k: v for k, v in changes.items() if v is not None}
        unknown = [k for k in given if k not in _FIELD_NAMES]
        if unknown:
            raise ValueError(f"{unknown[0]}: not a suite setting")
        if not given:
            return self
        changed = [k for k in given if k in SCHEMA["grid"] and _plain(given[k]) != _plain(getattr(self, k))]
        if changed:
            given["points"] = None  # the file's grid size no longer applies
            given["description"] = f"{self.description} (command line changed: {', '.join(changed)})"
        raw = to_dict(replace(self, **given))
        return replace(from_dict(raw, source="command line", base_dir=None, names=CLI_NAMES), source=self.source)


_FIELD_NAMES = {f.name for f in fields(Suite)}

# section -> keys; each key is a Suite field of the same name
SCHEMA: dict[str, tuple[str, ...]] = {
    "suite": ("name", "description", "points"),
    "grid": ("models", "variants", "keeps", "placements", "tome_r", "evit_locations", "batch_size",
             "dtypes", "devices", "img_size", "match", "seed", "importance", "fuse", "compile"),
    "weights": ("checkpoint", "selector", "depth_checkpoint"),
    "data": ("imagenet", "nyu", "limit", "eval_batch_size", "num_workers", "depth_input"),
    "measure": ("timing", "latency", "memory", "energy", "warmup", "repeats", "time_budget_s", "pair_min_rounds", "pair_budget_s",
                "noise_threshold", "pair_dense"),
    "gate": ("tolerance", "remeasure_budget_s"),
}
IGNORED_SECTIONS = ("run", "points")  # written into a run's resolved suite.toml


# --------------------------------------------------------------------------- checkers
class _Ctx:
    """Where a value came from, for error messages (``names``: key -> how to call it,
    e.g. the command-line option that set it)."""

    def __init__(self, source: str, base_dir: Path | None, names: Mapping[str, str] | None = None) -> None:
        self.source, self.base_dir, self.names = source, base_dir, names or {}

    def fail(self, key: str, expected: str, got: Any) -> SuiteError:
        label = self.names.get(".".join(key.split(".")[:2]), f"key '{key}'")
        return SuiteError(f"{self.source}: {label}: expected {expected}, got {got!r}")


#: suite key -> the ``tosa-bench sweep`` option that overrides it (for error messages)
CLI_NAMES = {
    "grid.models": "--model", "grid.variants": "--variant", "grid.keeps": "--keep", "grid.placements": "--placement",
    "grid.tome_r": "--tome-r", "grid.evit_locations": "--evit-loc", "grid.batch_size": "--batch-size",
    "grid.dtypes": "--dtype", "grid.devices": "--device", "grid.img_size": "--img-size", "grid.match": "--match",
    "grid.seed": "--seed", "grid.importance": "--importance", "grid.compile": "--compile-mode", "weights.checkpoint": "--checkpoint", "weights.selector": "--selector",
    "weights.depth_checkpoint": "--depth-checkpoint", "data.imagenet": "--imagenet", "data.nyu": "--nyu",
    "data.limit": "--limit", "data.eval_batch_size": "--eval-batch-size", "data.num_workers": "--workers",
    "measure.warmup": "--warmup", "measure.repeats": "--repeats", "measure.time_budget_s": "--time-budget",
}


def _int(ctx: _Ctx, key: str, v: Any, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ctx.fail(key, f"an integer >= {lo}", v)
    return v


def _list(ctx: _Ctx, key: str, v: Any, item: Callable[[Any], Any], what: str, allow_scalar: bool = True) -> tuple:
    if allow_scalar and not isinstance(v, (list, tuple)):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise ctx.fail(key, f"a list of {what}", v)
    out = []
    for x in v:
        try:
            out.append(item(x))
        except (TypeError, ValueError):
            raise ctx.fail(key, f"a list of {what}", v) from None
    return tuple(out)


def _str_item(choices: tuple[str, ...] | None = None) -> Callable[[Any], str]:
    def check(x: Any) -> str:
        if not isinstance(x, str) or not x or (choices is not None and x not in choices):
            raise ValueError
        return x

    return check


def _keep_item(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not (0 < float(x) <= 1) or math.isnan(x):
        raise ValueError
    return float(x)


def _pos_int_item(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise ValueError
    return x


def _nonneg_int_item(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise ValueError
    return x


def _index_list_item(x: Any) -> tuple[int, ...]:
    if isinstance(x, str):
        x = [int(p) for p in x.split(",") if p.strip()]
    if not isinstance(x, (list, tuple)) or not x:
        raise ValueError
    return tuple(_nonneg_int_item(i) for i in x)


def _placement_item(x: Any) -> str | tuple[int, ...]:
    """A scheme name stays a string; '3,5,7' or [3, 5, 7] becomes a tuple of ints."""
    if isinstance(x, str) and not any(c.isdigit() for c in x.split(":")[0]):
        if not x.strip():
            raise ValueError
        return x.strip()
    return _index_list_item(x)


def _per_device(ctx: _Ctx, key: str, v: Any, item: Callable[[Any], Any], what: str) -> dict[str, tuple]:
    """An item, a list, or a table {cpu = ..., cuda = ...} -> {device type: tuple}."""
    if isinstance(v, Mapping):
        unknown = [k for k in v if k not in DEVICE_TYPES]
        if unknown:
            raise ctx.fail(f"{key}.{unknown[0]}", f"a device type ({', '.join(DEVICE_TYPES)})", unknown[0])
        out = {k: _list(ctx, f"{key}.{k}", v[k], item, what) for k in DEVICE_TYPES if k in v}
        for k in DEVICE_TYPES:
            out.setdefault(k, out.get("cpu") or out.get("cuda"))
        return out
    values = _list(ctx, key, v, item, what)
    return {k: values for k in DEVICE_TYPES}


def _path(ctx: _Ctx, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ctx.fail(key, "a path (non-empty string)", v)
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = (ctx.base_dir if ctx.base_dir is not None else Path.cwd()) / p
    return str(p)


def _paths_by_model(ctx: _Ctx, key: str, v: Any) -> dict[str, str]:
    """A path for every model ("*") or a table model -> path."""
    if isinstance(v, Mapping):
        return {str(m): _path(ctx, f"{key}.{m}", p) for m, p in v.items()}
    return {"*": _path(ctx, key, v)}


def _bool(ctx: _Ctx, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ctx.fail(key, "true or false", v)
    return v


# --------------------------------------------------------------------------- parse
def from_dict(doc: Mapping[str, Any], source: str = "suite", base_dir: Path | None = None,
              names: Mapping[str, str] | None = None) -> Suite:
    """Validate a parsed TOML document (sections as in :data:`SCHEMA`) into a Suite;
    ``names`` renames keys in error messages (see :data:`CLI_NAMES`)."""
    ctx = _Ctx(source, base_dir, names)
    if not isinstance(doc, Mapping):
        raise ctx.fail("(top level)", "a table of sections", doc)
    for section, body in doc.items():
        if section in IGNORED_SECTIONS:
            continue
        if section not in SCHEMA:
            raise ctx.fail(section, f"a section among [{'], ['.join(SCHEMA)}]", section)
        if not isinstance(body, Mapping):
            raise ctx.fail(section, "a table", body)
        for key in body:
            if key not in SCHEMA[section]:
                raise ctx.fail(f"{section}.{key}", f"a known key of [{section}] ({', '.join(SCHEMA[section])})", key)
    flat = {key: doc[s][key] for s in SCHEMA if s in doc for key in doc[s]}
    k = {key: s for s, keys in SCHEMA.items() for key in keys}
    full = lambda key: f"{k[key]}.{key}"  # noqa: E731
    out: dict[str, Any] = {}
    for key, v in flat.items():
        name = full(key)
        if key in ("name", "description"):
            if not isinstance(v, str) or (key == "name" and not v.strip()):
                raise ctx.fail(name, "a string", v)
            out[key] = v
        elif key == "points":
            out[key] = _int(ctx, name, v, 1)
        elif key == "models":
            from tosa_bench.models.configs import MODEL_CONFIGS

            out[key] = _list(ctx, name, v, _str_item(tuple(MODEL_CONFIGS)), f"model names ({', '.join(MODEL_CONFIGS)})")
        elif key == "variants":
            known = registry.names()  # read now: methods registered after import count too
            out[key] = _list(ctx, name, v, _str_item(known), f"variants ({', '.join(known)})")
        elif key == "keeps":
            out[key] = _list(ctx, name, v, _keep_item, "numbers in (0, 1]")
        elif key == "placements":
            out[key] = _list(ctx, name, v, _placement_item, "placement schemes or block-index lists")
        elif key == "tome_r":
            out[key] = _list(ctx, name, v, _nonneg_int_item, "non-negative integers")
        elif key == "evit_locations":
            if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                v = [v]  # one list of indices
            out[key] = _list(ctx, name, v, _index_list_item, "block-index lists like [3, 6, 9]")
        elif key == "batch_size":
            out[key] = _per_device(ctx, name, v, _pos_int_item, "positive integers")
        elif key == "dtypes":
            out[key] = _per_device(ctx, name, v, _str_item(DTYPE_NAMES), f"precisions ({', '.join(DTYPE_NAMES)})")
        elif key == "devices":
            out[key] = _list(ctx, name, v, _device_item, "devices (auto, cpu, cuda, cuda:N)")
        elif key == "img_size":
            out[key] = _int(ctx, name, v, 1)
        elif key == "match":
            if v not in MATCH_MODES:
                raise ctx.fail(name, f"one of {', '.join(MATCH_MODES)}", v)
            out[key] = v
        elif key == "importance":
            if v not in IMPORTANCE_RULES:
                raise ctx.fail(name, f"one of {', '.join(IMPORTANCE_RULES)}", v)
            out[key] = v
        elif key in ("seed", "num_workers", "warmup"):
            out[key] = _int(ctx, name, v, 0)
        elif key in ("repeats", "limit", "eval_batch_size"):
            out[key] = _int(ctx, name, v, 1 if key != "limit" else 0)
        elif key == "compile":
            out[key] = _compile_modes(ctx, name, v)
        elif key in ("fuse", "timing", "latency", "memory", "energy"):
            out[key] = _bool(ctx, name, v)
        elif key in ("checkpoint", "selector", "depth_checkpoint"):
            out[key] = _paths_by_model(ctx, name, v)
        elif key in ("imagenet", "nyu"):
            out[key] = _path(ctx, name, v)
        elif key == "depth_input":
            hw = _list(ctx, name, v, _pos_int_item, "two positive integers [h, w]", allow_scalar=False)
            if len(hw) != 2:
                raise ctx.fail(name, "two positive integers [h, w]", v)
            out[key] = hw
        elif key == "time_budget_s":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v):
                raise ctx.fail(name, "a number of seconds >= 0 (0: no budget)", v)
            out[key] = float(v) if v > 0 else None
        elif key in ("pair_budget_s", "remeasure_budget_s"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v):
                raise ctx.fail(name, "a number of seconds >= 0 (0: " + ("no budget)" if key == "pair_budget_s" else "never)"), v)
            out[key] = float(v)
        elif key == "pair_min_rounds":
            out[key] = _int(ctx, name, v, 2)
        elif key == "noise_threshold":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ctx.fail(name, "a relative half-width in (0, 1), e.g. 0.05", v)
            out[key] = float(v)
        elif key == "pair_dense":
            out[key] = _bool(ctx, name, v)
        elif key == "tolerance":
            out[key] = _tolerances(ctx, name, v)
    for key, models in (("checkpoint", out.get("checkpoint")), ("selector", out.get("selector")), ("depth_checkpoint", out.get("depth_checkpoint"))):
        for m in models or {}:
            if m != "*" and m not in out.get("models", Suite.models):
                raise ctx.fail(f"weights.{key}.{m}", "a model of grid.models", m)
    for key in ("models", "variants", "keeps", "devices"):
        if key in out and not out[key]:
            raise ctx.fail(full(key), "a non-empty list", [])
    if out.get("match") == "gmacs" and out.get("tome_r"):
        raise ctx.fail("grid.tome_r", "no explicit ToMe r with match = \"gmacs\" (matching chooses r)", list(out["tome_r"]))
    return Suite(**out, source=source if source != "command line" else None)


def _tolerances(ctx: _Ctx, key: str, v: Any) -> dict[str, float]:
    """{ratio metric: relative tolerance in (0, 10)}; the metrics are the gate's ratio metrics."""
    from tosa_bench.results.compare import METRICS

    ratio = [m.name for m in METRICS if m.kind == "ratio"]
    if not isinstance(v, Mapping):
        raise ctx.fail(key, f"a table of relative tolerances, e.g. {{{ratio[0]} = 0.10}}", v)
    out = {}
    for metric, tol in v.items():
        if metric not in ratio:
            raise ctx.fail(f"{key}.{metric}", f"a ratio metric ({', '.join(ratio)})", metric)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 10:
            raise ctx.fail(f"{key}.{metric}", "a relative tolerance in (0, 10), e.g. 0.10", tol)
        out[str(metric)] = float(tol)
    return out


def _compile_modes(ctx: _Ctx, key: str, v: Any) -> tuple[str, ...]:
    """``compile``: true/false (older suites: "default" / eager), a mode or a list of them,
    each once, in the order given."""
    if isinstance(v, bool):
        return ("default",) if v else (EAGER,)
    what = f"{EAGER} and/or torch.compile modes ({', '.join(COMPILE_MODES)}), or true/false"
    modes = _list(ctx, key, v, _str_item((EAGER, *COMPILE_MODES)), what)
    if not modes:
        raise ctx.fail(key, what, v)
    return tuple(dict.fromkeys(modes))


def _device_item(x: Any) -> str:
    if not isinstance(x, str) or not (x in ("auto", "cpu", "cuda") or (x.startswith("cuda:") and x[5:].isdigit())):
        raise ValueError
    return x


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file. ``path`` may also be a shipped suite's name
    (``quick`` -> ``suites/quick.toml``)."""
    p = resolve_suite_path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"{p}: not valid TOML ({err})") from None
    except UnicodeDecodeError as err:
        raise SuiteError(f"{p}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise SuiteError(f"{p}: cannot be read ({err.strerror or err})") from None
    if not doc:  # an empty file (or comments only) is a mistake, not "the defaults"
        raise SuiteError(f"{p}: the suite is empty (no sections); give at least [grid], or leave out --suite for the default run")
    return from_dict(doc, source=str(p), base_dir=p.parent)


def resolve_suite_path(path: str | Path) -> Path:
    """An existing file, else a shipped suite ``tosa_bench/suites/<path>.toml`` (package
    data, so names work after any install); SuiteError if neither."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    named = SUITES_DIR / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if p.parent == Path(".") and named.is_file():
        return named
    if p.is_dir():
        raise SuiteError(f"{p}: is a directory, expected a suite .toml file")
    raise SuiteError(f"{p}: suite file not found")


# --------------------------------------------------------------------------- write
def to_dict(suite: Suite) -> dict[str, Any]:
    """The TOML document of ``suite`` (sections as in :data:`SCHEMA`; None left out)."""
    flat = asdict(suite)
    doc: dict[str, Any] = {}
    for section, keys in SCHEMA.items():
        body = {}
        for key in keys:
            v = flat[key]
            if key == "time_budget_s" and v is None:
                v = 0  # "no budget" (TOML has no null)
            if v is None or (key in ("checkpoint", "selector", "depth_checkpoint", "tolerance") and not v):
                continue
            if key in ("checkpoint", "selector", "depth_checkpoint") and set(v) == {"*"}:
                v = v["*"]
            body[key] = _plain(v)
        doc[section] = body
    return doc


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v
