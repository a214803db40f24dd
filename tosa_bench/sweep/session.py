"""One sweep session end to end: plan (suite -> grid -> checks -> run directory), run, tables.

Order, so that a bad whole-run input stops the sweep before any record is written:
the suite is validated (file, keys, values), the grid expanded (every point's options
bound to its model), the output directory checked (:func:`check_out_dir`: a new or empty
directory, never the file-system root or the home folder), made, probed for writing and
locked (:mod:`.lock`: one writer per run directory), the weights and datasets opened and
checked (:mod:`.inputs`), then ``env.json`` and ``suite.toml`` are written, and only then
is anything measured. A directory this session made is removed again if a check after it
fails and it still holds nothing but the lock.

New runs go to ``runs/<run-id>`` (:data:`RUNS_ROOT`, relative to the current directory;
ignored by git), never into the curated ``results/`` of the repository.

Resume (``--resume RUN_DIR``) takes the grid from ``RUN_DIR/suite.toml`` (its
``[[points]]``, so a later change of the natural mappings cannot shift the grid under a
half-finished run), re-checks the inputs, and measures the points whose latest record is
not ``ok``, plus, when the resumed suite has data the run lacked (:mod:`.resume`), the
accuracy of the ok points that have none.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from tosa_bench.errors import OutputPathError, RunStateError, SuiteError
from tosa_bench.measure.spec import Point
from tosa_bench.results.store import ENV, RECORDS, SUITE, RunStore
from tosa_bench.sweep import lock
from tosa_bench.sweep.accuracy import AccuracyPlan
from tosa_bench.sweep.grid import GridPoint, expand, select_shard
from tosa_bench.sweep.suite import SCHEMA, Suite, from_dict, to_dict

#: where run directories go when no --out is given (relative to the current directory)
RUNS_ROOT = Path("runs")
SUITE_HEADER = ("Resolved suite of a tosa-bench sweep run (written by tosa-bench; read by --resume and merge).\n"
                "[[points]] is the whole grid; this run measures the shard named in [run].")


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
        raise OutputPathError(f"runs-dir: cannot create {root} ({err.strerror or err})") from None
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
    return toml_text(doc, SUITE_HEADER)


def rewrite_settings(store: RunStore, suite: Suite) -> None:
    """Replace the suite sections of ``store``'s ``suite.toml`` by ``suite``'s, keeping its
    ``[suite]``, ``[run]`` and ``[[points]]`` (used when a resume adds data to a run)."""
    path = store.path / SUITE
    doc = tomllib.loads(path.read_text())
    new = to_dict(suite)
    for section in SCHEMA:
        if section != "suite":
            doc[section] = new[section]
    store.write_text(SUITE, toml_text(doc, SUITE_HEADER))


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


def is_run_dir(path: Path) -> bool:
    """A tosa-bench run directory: it holds ``records.jsonl`` or ``suite.toml``."""
    return (path / RECORDS).is_file() or (path / SUITE).is_file()


#: what a process killed while starting a run may leave: the lock, the write probe, the
#: temporary files of atomic writes (``.suite.toml.XXXX``); none makes a folder non-empty
_LEFTOVER_PREFIXES = (".probe.", *(f".{n}." for n in (SUITE, ENV, RECORDS)))


def _contents(path: Path) -> list[Path]:
    """Entries of ``path`` other than leftovers of a start (:data:`_LEFTOVER_PREFIXES`, the lock)."""
    return [e for e in path.iterdir() if e.name != lock.LOCK and not e.name.startswith(_LEFTOVER_PREFIXES)]


def check_out_dir(path: Path, overwrite: bool = False, option: str = "out", resumable: bool = True) -> None:
    """Refuse an output directory a new run must not write into (before anything is made):
    the file-system root, the home folder, a path that is a file, or a directory that is
    not empty, unless ``overwrite`` and it is an earlier run directory (replaced then).
    :class:`~tosa_bench.errors.OutputPathError` naming ``option``; ``resumable``: the
    command has --resume and --overwrite to offer for an earlier run."""
    p = Path(path).expanduser()
    real = p.resolve()
    if real == Path(real.anchor):
        raise OutputPathError(f"{option}: {p} is the file-system root; give a new directory, e.g. runs/NAME")
    if real == Path.home().resolve():
        raise OutputPathError(f"{option}: {p} is your home folder; give a new directory, e.g. runs/NAME")
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{option}: {p} exists and is not a directory; give a new directory")
    if not p.is_dir() or not _contents(p):
        return
    if not is_run_dir(p):
        raise OutputPathError(f"{option}: {p} is not empty and not a run directory; give a new or empty directory")
    if not overwrite and not resumable:
        raise OutputPathError(f"{option}: {p} already holds a run; give a new or empty directory")
    if not overwrite:
        raise OutputPathError(f"{option}: {p} already holds a run; continue it with --resume {p}, "
                              f"replace it with --overwrite, or give another directory")


def _make_dir(path: Path, option: str = "out") -> None:
    """Create ``path`` (and its parents); OutputPathError with the OS reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"{option}: cannot create {path} ({err.strerror or err})") from None


def claim_out_dir(path: Path, overwrite: bool = False, option: str = "out", resumable: bool = True) -> tuple[bool, bool]:
    """Check (:func:`check_out_dir`), make, probe and lock ``path`` for a new run, and
    check it again under the lock (another process may have started a run there in
    between). Returns (made: the directory was made here, locked: the lock was taken
    here, not held by this process already). An earlier run that
    ``overwrite`` lets through is still there: :func:`clear_run` removes it."""
    check_out_dir(path, overwrite, option, resumable)
    made = not path.exists()
    _make_dir(path, option)
    locked = False
    try:
        RunStore(path).check_writable()
        locked = lock.acquire(path)
        check_out_dir(path, overwrite, option, resumable)
    except BaseException:
        _undo_dir(path, made, locked)
        raise
    return made, locked


def clear_run(path: Path) -> None:
    """Remove an earlier run's files from ``path`` (everything but the lock, which this
    process must hold, so a run another process is writing is never removed)."""
    if not lock.held_by_me(path) or not _contents(path):
        return
    n = len(RunStore(path).load().records)
    for e in _contents(path):
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e)
        else:
            e.unlink()
    import sys

    print(f"note: --overwrite: removed the earlier run in {path} ({n} records)", file=sys.stderr, flush=True)


def _undo_dir(path: Path, made: bool, locked: bool = True) -> None:
    """After a failed start: let go of the lock (if ``locked``: taken by this start) and,
    if this session made ``path`` and it holds nothing else, remove it again."""
    if locked:
        lock.release(path)
    if made and path.is_dir() and not _contents(path):
        (path / lock.LOCK).unlink(missing_ok=True)
        try:
            path.rmdir()
        except OSError:
            pass


def plan_new(suite: Suite, out: str | Path | None = None, shard: tuple[int, int] | None = None,
             runs_root: str | Path = RUNS_ROOT, check_inputs: bool = True, overwrite: bool = False) -> Plan:
    """Validate everything and prepare a new run directory (module docstring)."""
    from tosa_bench.sweep.inputs import validate_inputs

    grid = expand(suite)
    if not grid:
        raise SuiteError("grid: the suite selects no points (check variants and keeps)")
    points = select_shard(grid, shard)
    if out is not None:
        path = Path(out).expanduser()
        made, locked = claim_out_dir(path, overwrite)
    else:
        path, made = _claim_dir(Path(runs_root), default_run_id(suite, shard)), True
        try:
            locked = lock.acquire(path)
        except BaseException:
            _undo_dir(path, made, locked=False)
            raise
    run_id = path.name
    store = RunStore(path)
    try:
        accuracy = validate_inputs(suite, grid) if check_inputs else None
        if overwrite:
            clear_run(path)  # only now: a bad input above leaves the earlier run as it was
        _write_start(store, suite, grid, points, shard, run_id, resumed=False)
    except BaseException:
        _undo_dir(path, made, locked)
        raise
    return Plan(suite, grid, points, store, _needed(accuracy, suite), shard, run_id)


def plan_resume(run_dir: str | Path, check_inputs: bool = True, suite: Suite | None = None) -> Plan:
    """Prepare to continue ``run_dir`` (module docstring). ``suite``: the stored suite with
    the changes a resume may make (:func:`tosa_bench.sweep.resume.reconcile`: data added);
    it replaces the stored settings in ``suite.toml`` once the inputs are checked."""
    from tosa_bench.sweep.inputs import validate_inputs

    store = RunStore.existing(run_dir)
    store.check_writable()
    locked = lock.acquire(store.path)
    try:
        stored, grid, shard, run = read_resolved(store)
        suite = suite or stored
        points = select_shard(grid, shard)
        accuracy = validate_inputs(suite, grid) if check_inputs else None
        if to_dict(suite) != to_dict(stored):
            rewrite_settings(store, suite)
        run_id = run.get("run_id") or store.path.name
        _write_start(store, suite, grid, points, shard, run_id, resumed=True)
    except BaseException:
        if locked:
            lock.release(store.path)
        raise
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
    else:  # suite.toml first: from then on the folder is a run that --resume can continue
        store.write_text(SUITE, resolved_suite_text(suite, grid, shard, run_id, len(points)))
        store.write_json(ENV, env)
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


def measure_plan(plan: Plan, progress: Any = None) -> Any:
    """Measure the points of ``plan`` not ok yet (adding accuracy an ok point lacks) into
    its store, then rewrite its tables; returns the runner's summary. The one way a plan is
    measured, by ``sweep`` and by a launched shard alike."""
    from tosa_bench.sweep.resume import lacks_accuracy
    from tosa_bench.sweep.runner import run_points

    summary = run_points(plan.points, plan.store, plan.suite.settings(),
                         accuracy=plan.accuracy.evaluate if plan.accuracy is not None else None,
                         progress=progress, run_id=plan.run_id, lacks_accuracy=lacks_accuracy(plan.suite))
    write_tables(plan.store)
    return summary
