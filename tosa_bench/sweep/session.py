"""One sweep session end to end: plan (suite -> grid -> checks -> run directory), run, tables.

Order, so that a bad whole-run input stops the sweep before any record is written:
the suite is validated (file, keys, values), the grid expanded (every point's options
bound to its model), the output directory made and probed for writing, the weights and
datasets opened and checked (:mod:`.inputs`), then ``env.json`` and ``suite.toml`` are
written, and only then is anything measured. A directory this session made is removed
again if a check after it fails and it is still empty.

Resume (``--resume RUN_DIR``) takes the grid from ``RUN_DIR/suite.toml`` (its
``[[points]]``, so a later change of the natural mappings cannot shift the grid under a
half-finished run), re-checks the inputs, and measures the points whose latest record is
not ``ok``.
"""

from __future__ import annotations

import datetime as _dt
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from tosa_bench.errors import OutputPathError, RunStateError, SuiteError
from tosa_bench.measure.spec import Point
from tosa_bench.results.store import ENV, SUITE, RunStore
from tosa_bench.sweep.accuracy import AccuracyPlan
from tosa_bench.sweep.grid import GridPoint, expand, select_shard
from tosa_bench.sweep.suite import Suite, from_dict, to_dict

RESULTS_ROOT = Path("results")


@dataclass
class Plan:
    """A checked, ready-to-run session: ``points`` (this shard's), ``grid`` (all),
    ``store``, ``accuracy`` (None: no dataset given), ``suite``, ``shard``, ``run_id``."""

    suite: Suite
    grid: list[GridPoint]
    points: list[GridPoint]
    store: RunStore
    accuracy: AccuracyPlan | None
    shard: tuple[int, int] | None
    run_id: str
    resumed: bool = False


def default_run_id(suite: Suite, shard: tuple[int, int] | None) -> str:
    """``YYYYmmdd-HHMMSS-<suite name>[-shardIofN]`` (UTC)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in suite.name) or "sweep"
    return f"{stamp}-{name}" + (f"-shard{shard[0]}of{shard[1]}" if shard else "")


def _claim_dir(root: Path, run_id: str) -> Path:
    """Create ``root/run_id`` (or ``run_id-2``, ``-3``, ...) atomically, so two sweeps
    started in the same second never share a directory."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"results: cannot create {root} ({err.strerror or err})") from None
    for n in range(1, 1000):
        p = root / (run_id if n == 1 else f"{run_id}-{n}")
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputPathError(f"out: cannot create {p} ({err.strerror or err})") from None
    raise OutputPathError(f"out: too many runs named {run_id} in {root}")


def point_to_toml(gp: GridPoint) -> dict[str, Any]:
    """One ``[[points]]`` entry: the hash, the point's identity and its grid labels."""
    cfg = gp.point.config()
    entry = {"hash": gp.hash, **{k: v for k, v in cfg.items() if v is not None}}
    entry["keeps"] = list(gp.keeps)
    if gp.placement is not None:
        entry["placement"] = gp.placement
    if gp.match:
        entry["match"] = [dict(m) for m in gp.match]
    return entry


def point_from_toml(entry: dict[str, Any], where: str) -> GridPoint:
    """Inverse of :func:`point_to_toml`; :class:`~tosa_bench.errors.RunStateError` if a key is
    missing or the stored hash does not match."""
    try:
        point = Point(model=entry["model"], variant=entry["variant"], options=dict(entry.get("options", {})),
                      batch_size=entry["batch_size"], dtype=entry["dtype"], device=entry["device"],
                      img_size=entry.get("img_size"), checkpoint=entry.get("checkpoint"), selector=entry.get("selector"),
                      compile=entry.get("compile", False))
    except KeyError as err:
        raise RunStateError(f"{where}: key {err.args[0]!r} missing") from None
    gp = GridPoint(point, tuple(entry.get("keeps", ())), entry.get("placement"), tuple(entry.get("match", ())))
    if gp.hash != entry.get("hash"):
        raise RunStateError(f"{where}: stored hash {entry.get('hash')} but the configuration hashes to {gp.hash}")
    return gp


def resolved_suite_text(suite: Suite, grid: list[GridPoint], shard: tuple[int, int] | None, run_id: str, n_shard: int) -> str:
    """The run's ``suite.toml``: the suite's sections, ``[run]`` and the whole grid."""
    doc: dict[str, Any] = to_dict(suite)
    doc["run"] = {"run_id": run_id, "source": suite.source or "defaults (tosa-bench sweep)",
                  "shard": f"{shard[0]}/{shard[1]}" if shard else None, "grid_points": len(grid), "shard_points": n_shard}
    doc["points"] = [point_to_toml(gp) for gp in grid]
    header = ("Resolved suite of a tosa-bench sweep run (written by tosa-bench; read by --resume and merge).\n"
              "[[points]] is the whole grid; this run measures the shard named in [run].")
    return toml_text(doc, header)


def toml_text(doc: dict[str, Any], header: str = "") -> str:
    """``doc`` as TOML (tomli-w) with ``header`` lines prepended as ``#`` comments. None
    values are left out at every depth: TOML has no null, and a key left out reads back
    as its default wherever the suite allows None."""
    comments = "".join(f"# {h}\n" if h else "#\n" for h in header.splitlines())
    return comments + ("\n" if comments else "") + tomli_w.dumps(_without_none(doc))


def _without_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _without_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_without_none(x) for x in v if x is not None]
    return v


def read_resolved(store: RunStore) -> tuple[Suite, list[GridPoint], tuple[int, int] | None, dict[str, Any]]:
    """A run's suite, grid, shard and [run] table from its ``suite.toml``."""
    from tosa_bench.sweep.grid import parse_shard

    path = store.path / SUITE
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RunStateError(f"{store.path}: no {SUITE} (not a sweep run directory)") from None
    except tomllib.TOMLDecodeError as err:
        raise RunStateError(f"{path}: not valid TOML ({err})") from None
    suite = from_dict(doc, source=str(path))
    run = doc.get("run", {})
    grid = [point_from_toml(e, f"{path} point {i + 1}") for i, e in enumerate(doc.get("points", []))]
    return suite, grid, parse_shard(run.get("shard")), run


def plan_new(suite: Suite, out: str | Path | None = None, shard: tuple[int, int] | None = None,
             results_root: str | Path = RESULTS_ROOT, check_inputs: bool = True) -> Plan:
    """Validate everything and prepare a new run directory (module docstring)."""
    from tosa_bench.sweep.inputs import validate_inputs

    grid = expand(suite)
    if not grid:
        raise SuiteError("grid: the suite selects no points (check variants and keeps)")
    points = select_shard(grid, shard)
    if out is not None:
        path = Path(out)
        made = not path.exists()
    else:
        path, made = _claim_dir(Path(results_root), default_run_id(suite, shard)), True
    run_id = path.name
    store = RunStore.create(path)
    try:
        accuracy = validate_inputs(suite, grid) if check_inputs else None
        _write_start(store, suite, grid, points, shard, run_id, resumed=False)
    except BaseException:
        if made and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise
    return Plan(suite, grid, points, store, _needed(accuracy, suite), shard, run_id)


def plan_resume(run_dir: str | Path, check_inputs: bool = True) -> Plan:
    """Prepare to continue ``run_dir`` (module docstring)."""
    from tosa_bench.sweep.inputs import validate_inputs

    store = RunStore.existing(run_dir)
    store.check_writable()
    suite, grid, shard, run = read_resolved(store)
    points = select_shard(grid, shard)
    accuracy = validate_inputs(suite, grid) if check_inputs else None
    run_id = run.get("run_id") or store.path.name
    _write_start(store, suite, grid, points, shard, run_id, resumed=True)
    return Plan(suite, grid, points, store, _needed(accuracy, suite), shard, run_id, resumed=True)


def _needed(accuracy: AccuracyPlan | None, suite: Suite) -> AccuracyPlan | None:
    return accuracy if (suite.imagenet or suite.nyu) else None


def _write_start(store: RunStore, suite: Suite, grid: list[GridPoint], points: list[GridPoint],
                 shard: tuple[int, int] | None, run_id: str, resumed: bool) -> None:
    from tosa_bench.measure.env import environment_record

    env = environment_record(device=points[0].point.device if points else None)
    if resumed:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        store.write_json(f"env-resume-{stamp}.json", env)
    else:
        store.write_json(ENV, env)
        store.write_text(SUITE, resolved_suite_text(suite, grid, shard, run_id, len(points)))
    store.open_for_append()


def write_tables(store: RunStore) -> None:
    """Rewrite ``table.md`` and ``table.csv`` from the store."""
    from tosa_bench.results import load_run
    from tosa_bench.results.tables import render

    run = load_run(store.path)
    if not run.records:
        return
    store.write_text("table.md", render(run, "md"))
    store.write_text("table.csv", render(run, "csv"))
