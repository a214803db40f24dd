"""Measure the points of a sweep one by one and record each as soon as it finishes.

The measuring function is injectable (default :func:`tosa_bench.measure.point.measure_point`)
so the store, resume and shard logic can be tested without real measurement.

Per point:

- success -> status ``ok`` with the measured fields (and accuracy fields);
- ``torch.OutOfMemoryError`` -> status ``oom`` (the CUDA cache is emptied, the sweep goes on);
- ``NonFiniteOutput`` or any other exception -> status ``error`` with ``error`` = the
  exception's type and first line (``error_traceback``: the last lines of the traceback);
- ``KeyboardInterrupt`` (Ctrl-C, and SIGTERM under :func:`.interrupt.stop_on_signals`)
  and SystemExit propagate: the point in flight is not recorded, every earlier one
  already is (resume with ``--resume``). A signal that arrives while a record is being
  appended waits until the record is whole (:func:`.interrupt.deferred`).

A point whose latest record is ``ok`` but lacks an accuracy the session can measure (data
added by ``--resume``, :func:`.resume.lacks_accuracy`) is not measured again: its accuracy
is evaluated and a copy of its record with the accuracy fields filled is appended
(``accuracy_session``, ``accuracy_elapsed_s`` say when and how long). The store's rule
that a config hash's last record is its result (:func:`~tosa_bench.results.store.latest_by_hash`)
makes that copy the point's one record for every reader.

The regression gate measures again the points it cannot judge (:func:`remeasure_points`,
within the suite's ``[gate] remeasure_budget_s``): each re-measurement is appended as the
point's new record, whose speed-up pools the rounds of every measurement of the point
(:func:`tosa_bench.measure.point.remeasure_speedup`).

Every record carries: ``config_hash``, ``status``, ``error``, ``config`` (the full
``Point.config()``), the point's identity fields at top level (model, variant, options,
keep, batch_size, dtype, device, img_size, checkpoint, selector, compile), the grid labels
(``grid_keeps``, ``placement_label``, ``match``), ``settings`` (the Settings used),
``run_id``, ``session`` (start of the session, UTC), ``time_utc`` (when the point finished),
``elapsed_s`` (wall time of the point, seconds), the measured fields of measure_point and
the accuracy fields (:mod:`.accuracy`).
"""

from __future__ import annotations

import datetime as _dt
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

from tosa_bench.measure.compiled import RecompiledWhileTimed
from tosa_bench.measure.energy import unmeasured
from tosa_bench.measure.spec import NonFiniteOutput, Point, Settings
from tosa_bench.results.store import RunStore
from tosa_bench.sweep.accuracy import ACCURACY_FIELDS
from tosa_bench.sweep.grid import GridPoint
from tosa_bench.sweep.interrupt import deferred
from tosa_bench.sweep.resume import pending
from tosa_bench.models.configs import get_config

MeasureFn = Callable[[Point, Settings, Callable[[str], None]], dict[str, Any]]
AccuracyFn = Callable[[Point, Callable[[str], None]], dict[str, Any]]


class Progress(Protocol):
    """What the runner reports while it works (the CLI draws a rich progress bar)."""

    def start(self, index: int, total: int, gp: GridPoint) -> None: ...
    def stage(self, label: str) -> None: ...
    def done(self, record: dict[str, Any]) -> None: ...


class _Silent:
    def start(self, index: int, total: int, gp: GridPoint) -> None:
        pass

    def stage(self, label: str) -> None:
        pass

    def done(self, record: dict[str, Any]) -> None:
        pass


@dataclass
class RunSummary:
    """Counts of one session: points ``measured`` now (``accuracy_added``: of them, ok
    points that only got their accuracy), ``skipped`` (already ok), and per status."""

    total: int = 0
    skipped: int = 0
    measured: int = 0
    accuracy_added: int = 0
    status: dict[str, int] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)


def _oom_type() -> tuple[type[BaseException], ...]:
    import torch

    types: list[type[BaseException]] = []
    for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)):
        if isinstance(t, type) and t not in types:
            types.append(t)
    return tuple(types)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def base_record(gp: GridPoint, settings: Settings, run_id: str, session: str) -> dict[str, Any]:
    """The fields every record has, whatever happened to the point."""
    cfg = gp.point.config()
    return {
        "config_hash": gp.hash,
        "status": None,
        "error": None,
        "model": cfg["model"],
        "variant": cfg["variant"],
        "keep": cfg["options"].get("keep"),
        "options": cfg["options"],
        "batch_size": cfg["batch_size"],
        "dtype": cfg["dtype"],
        "device": cfg["device"],
        "img_size": get_config(cfg["model"], cfg["img_size"]).img_size,  # effective side, px
        "checkpoint": cfg["checkpoint"],
        "selector": cfg["selector"],
        "compile": cfg["compile"],
        **gp.labels(),
        "config": cfg,
        "settings": asdict(settings),
        **unmeasured("not measured (the point did not finish)"),  # a finished point's fields replace these
        "run_id": run_id,
        "session": session,
    }


def measure_one(
    gp: GridPoint,
    settings: Settings,
    measure: MeasureFn,
    accuracy: AccuracyFn | None,
    stage: Callable[[str], None],
    run_id: str = "",
    session: str = "",
) -> dict[str, Any]:
    """Measure one point and return its complete record (never raises for a point's own
    failure; see module docstring)."""
    record = base_record(gp, settings, run_id, session)
    t0 = time.perf_counter()
    phase = "measure"
    try:
        fields = measure(gp.point, settings, stage)
        record.update({k: v for k, v in fields.items() if k not in ("status", "error", "config_hash")})
        phase = "accuracy"
        if accuracy is not None:
            record.update(accuracy(gp.point, stage))
        else:
            record.update({k: None for k in ACCURACY_FIELDS})
            record["accuracy_reason"] = "no --imagenet or --nyu given"
        record["status"] = "ok"
    except _oom_type() as err:
        record.update(status="oom", error=f"{phase}: {_first_line(err)}")
    except (NonFiniteOutput, RecompiledWhileTimed) as err:  # the point's own verdict: its reason says it all
        record.update(status="error", error=f"{phase}: {_first_line(err)}")
    except Exception as err:  # one point's failure must not stop the sweep
        record.update(status="error", error=f"{phase}: {_first_line(err)}",
                      error_traceback="".join(traceback.format_exception(err)[-6:]))
    if record["status"] != "ok":
        _free_cuda()  # after the except blocks: their tracebacks no longer pin tensors
    record["time_utc"] = _now()
    record["elapsed_s"] = time.perf_counter() - t0
    return record


def add_accuracy(
    previous: dict[str, Any],
    gp: GridPoint,
    accuracy: AccuracyFn,
    stage: Callable[[str], None],
    session: str = "",
) -> dict[str, Any]:
    """``previous`` (an ok record without the accuracy now wanted) with its accuracy
    fields measured; its speed fields are kept as measured. A failure makes it an
    ``oom``/``error`` record (the point is then measured whole on the next resume)."""
    record = dict(previous)
    t0 = time.perf_counter()
    try:
        record.update(accuracy(gp.point, stage))
    except _oom_type() as err:
        record.update(status="oom", error=f"accuracy: {_first_line(err)}")
    except Exception as err:  # one point's failure must not stop the sweep
        record.update(status="error", error=f"accuracy: {_first_line(err)}",
                      error_traceback="".join(traceback.format_exception(err)[-6:]))
    if record["status"] != "ok":
        _free_cuda()
    record["accuracy_session"] = session
    record["accuracy_elapsed_s"] = time.perf_counter() - t0
    record["time_utc"] = _now()
    return record


def _free_cuda() -> None:
    try:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def run_points(
    points: Sequence[GridPoint],
    store: RunStore,
    settings: Settings,
    measure: MeasureFn | None = None,
    accuracy: AccuracyFn | None = None,
    progress: Progress | None = None,
    run_id: str = "",
    lacks_accuracy: Callable[[dict[str, Any]], bool] | None = None,
) -> RunSummary:
    """Measure every point of ``points`` whose latest record in ``store`` is not ``ok``
    (and add the accuracy to ok records that ``lacks_accuracy``), appending each record
    (fsync'd) as it finishes."""
    if measure is None:
        from tosa_bench.measure.point import measure_point as measure
    progress = progress or _Silent()
    store.open_for_append()
    todo = pending(points, store, lacks_accuracy if accuracy is not None else None)
    summary = RunSummary(total=len(points), skipped=len(points) - len(todo))
    session = _now()
    for i, (gp, previous) in enumerate(todo):
        progress.start(i, len(todo), gp)
        if previous is None:
            record = measure_one(gp, settings, measure, accuracy, progress.stage, run_id, session)
        else:
            assert accuracy is not None
            record = add_accuracy(previous, gp, accuracy, progress.stage, session)
            summary.accuracy_added += 1
        with deferred():  # a signal now would stop the sweep after this record, not inside it
            store.append(record)
        summary.measured += 1
        summary.status[record["status"]] = summary.status.get(record["status"], 0) + 1
        summary.records.append(record)
        progress.done(record)
    return summary


#: how often one point is measured again at most, whatever the budget (its speed-up then
#: pools the rounds of 1 + this many measurements)
REMEASURE_TRIES = 3
RemeasureFn = Callable[[Point, Settings, dict[str, Any]], dict[str, Any]]


@dataclass
class Remeasured:
    """What :func:`remeasure_points` did: ``times`` (config hash -> re-measurements made),
    ``spent_s`` (wall time), ``out_of_budget`` (it stopped with points still wanted),
    ``errors`` (one line per point whose re-measurement failed; its record is kept)."""

    times: dict[str, int] = field(default_factory=dict)
    spent_s: float = 0.0
    out_of_budget: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.times.values())


def remeasure_points(
    wanted: Callable[[], Sequence[str]],
    grid: Sequence[GridPoint],
    store: RunStore,
    settings: Settings,
    budget_s: float,
    remeasure: RemeasureFn | None = None,
    tries: int = REMEASURE_TRIES,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[str], None] | None = None,
) -> Remeasured:
    """Measure again, in passes, the points whose config hashes ``wanted()`` names (asked
    anew before each pass, from what the store holds then), until none is wanted, each
    was measured again ``tries`` times, or ``budget_s`` seconds of wall time are spent
    (checked before each point: the point in flight finishes, so the budget is overrun
    by at most one point's time). Each result is appended to ``store`` as the point's
    new record (``remeasured_utc``, ``remeasure_elapsed_s``); a point whose
    re-measurement fails keeps its record and is not tried again. ``remeasure`` (default
    :func:`tosa_bench.measure.point.remeasure_speedup`) gets the point, ``settings`` and
    its latest record."""
    from tosa_bench.results.compare import point_label

    if remeasure is None:
        from tosa_bench.measure.point import remeasure_speedup as remeasure
    by_hash = {gp.hash: gp for gp in grid}
    done = Remeasured()
    failed: set[str] = set()
    while True:
        todo = [h for h in wanted() if h in by_hash and h not in failed and done.times.get(h, 0) < tries]
        if not todo:
            return done
        for h in todo:
            if done.spent_s >= budget_s:
                done.out_of_budget = True
                return done
            previous = store.latest()[h]
            if progress is not None:
                progress(f"re-measuring {point_label(previous)} ({done.times.get(h, 0) + 1} of at most {tries})")
            t0 = clock()
            try:
                record = remeasure(by_hash[h].point, settings, previous)
            except Exception as err:  # the point keeps the record it has
                failed.add(h)
                _free_cuda()
                done.errors.append(f"{point_label(previous)}: {_first_line(err)}")
            else:
                record.update(remeasured_utc=_now(), remeasure_elapsed_s=clock() - t0)
                with deferred():
                    store.append(record)
            done.times[h] = done.times.get(h, 0) + 1
            done.spent_s += clock() - t0
