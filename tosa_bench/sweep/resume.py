"""What ``sweep --resume RUN_DIR`` accepts on its command line, and what it still has to do.

Running the command that started a run again with ``--resume RUN_DIR`` continues it: the
options are compared with the run's stored ``suite.toml`` and those equal to it are simply
accepted. The rules per setting (:func:`reconcile`):

- the grid options (models, variants, keeps, placements, ToMe r, EViT blocks, batch
  sizes, dtypes, devices, input size, matching, seed, importance rule, compile, the
  backbone and selector weights) are judged by the grid they make: written differently
  but making the stored grid (``--device cpu`` for a stored ``auto`` on a CPU, a ``--seed``
  without random points, keeps in another order), they are accepted; making another
  grid, they are refused;
- the measurement settings (timing, latency, memory, warm-up, repeats, budgets) must
  equal the stored ones: the remaining points would be measured differently from the
  finished ones, in one table;
- every refused option is named at once, in one line, with the command that resumes the
  run as stored;
- data may be added: ``--imagenet`` / ``--nyu`` (and ``--depth-checkpoint``) on a run that
  had none. The ok points then get their accuracy measured (:func:`lacks_accuracy`) and
  the stored suite takes the data, so a later plain ``--resume`` keeps it. A dataset
  different from a stored one is refused. ``--limit``, ``--eval-batch-size`` and the
  depth input size may change only while the run has no data yet (they decide what the
  stored accuracy means);
- ``--workers`` is free (it changes nothing measured); ``--shard`` and ``--out`` must
  equal the stored shard and the run directory.

Not giving an option keeps the stored value; with ``--suite FILE`` every setting of the
file counts as given (it is the command that started the run).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from tosa_bench.errors import OptionError
from tosa_bench.results.store import RunStore
from tosa_bench.sweep.grid import GridPoint, expand, weights_for
from tosa_bench.sweep.suite import CLI_NAMES, SCHEMA, Suite

#: data that a resume may add to a run without it
DATA = ("imagenet", "nyu", "depth_checkpoint")
#: what the stored accuracy means: may change only while the run has no data
DATA_SETTINGS = ("limit", "eval_batch_size", "depth_input")
#: changes nothing measured
FREE = ("num_workers",)
#: not settings of the run
IGNORED = ("name", "description", "points", "tolerance", "remeasure_budget_s")
#: what makes the grid: judged by the grid, not by how it is written
GRID = (*SCHEMA["grid"], "checkpoint", "selector")

_FLAGS = {"timing": "--timing/--no-timing", "latency": "--latency/--no-latency", "memory": "--memory/--no-memory"}


def option_name(key: str) -> str:
    """How a user sets suite key ``key``: its command-line option, else ``[section] key``."""
    section = next(s for s, keys in SCHEMA.items() if key in keys)
    return CLI_NAMES.get(f"{section}.{key}") or _FLAGS.get(key) or f"[{section}] {key}"


def show(v: Any) -> str:
    """A setting's value, short: 0.5,0.7 / cpu=1 cuda=2 / none."""
    if v is None or v == {} or v == ():
        return "none"
    if isinstance(v, dict):
        return " ".join(f"{k}={show(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ",".join(show(x) for x in v) if all(not isinstance(x, (list, tuple)) for x in v) else " ".join(
            f"[{show(x)}]" for x in v)
    return str(v)


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in sorted(v.items())}
    return v


def reconcile(stored: Suite, given: Suite, run_dir: str | Path,
              others: Sequence[tuple[str, Any, Any]] = (), grid: Sequence[GridPoint] | None = None) -> Suite:
    """The suite to resume ``run_dir`` with: ``stored`` plus what ``given`` (the command
    line resolved like a new run's) may add (module docstring). ``others``: (option,
    stored, given) of settings kept outside the suite (--shard, --out); a given None means
    not given. ``grid``: the stored grid (None: grid options must be written as stored).
    :class:`~tosa_bench.errors.OptionError` naming every refused option."""
    s, g = asdict(stored), asdict(given)
    has_data = any(s[k] for k in DATA)
    changes: dict[str, Any] = {}
    refused: list[str] = []
    grid_diffs: list[str] = []

    def refuse(key_name: str, old: Any, new: Any, into: list[str] = refused) -> None:
        into.append(f"{key_name} (stored {show(old)}, given {show(new)})")

    for key in s:
        if key in IGNORED or key in FREE or key == "source":
            if key in FREE:
                changes[key] = g[key]
            continue
        old, new = s[key], g[key]
        if _plain(old) == _plain(new):
            continue
        if key in DATA:
            if not new:
                continue  # not given: keep the stored data
            if not old:
                changes[key] = new
                continue
        elif key in DATA_SETTINGS:
            if new is None:
                continue
            if not has_data:
                changes[key] = new
                continue
        elif key in GRID:
            refuse(option_name(key), old, new, grid_diffs)
            continue
        refuse(option_name(key), old, new)
    if grid_diffs and (grid is None or {gp.hash for gp in expand(given)} != {gp.hash for gp in grid}):
        refused[:0] = grid_diffs
    for name, old, new in others:
        if new is not None and new != old:
            refuse(name, old, new)
    if refused:
        raise OptionError(f"resume: {'; '.join(refused)}: {'these options differ' if len(refused) > 1 else 'this option differs'} "
                          f"from the run stored in {run_dir} and would change its grid or how it is measured; "
                          f"resume it as stored with: tosa-bench sweep --resume {run_dir}")
    return replace(stored, **changes) if changes else stored


def lacks_accuracy(suite: Suite) -> Callable[[dict[str, Any]], bool] | None:
    """A test for ok records that miss an accuracy ``suite`` measures (its data added by a
    resume); None when the suite has no data. Classification counts as measured when the
    record has ``n_images``, depth when it has ``depth_n_images`` (counts are set whenever
    the evaluation ran, even where a metric came out undefined)."""
    if suite.imagenet is None and suite.nyu is None:
        return None
    depth = dict(suite.depth_checkpoint)

    def lacks(record: dict[str, Any]) -> bool:
        if suite.imagenet is not None and record.get("n_images") is None:
            return True
        return (suite.nyu is not None and weights_for(depth, str(record.get("model"))) is not None
                and record.get("depth_n_images") is None)

    return lacks


def pending(points: Sequence[GridPoint], store: RunStore,
            lacks: Callable[[dict[str, Any]], bool] | None = None) -> list[tuple[GridPoint, dict[str, Any] | None]]:
    """The points of ``points`` still to do, in order: (point, None) to measure (no record,
    or its latest record is not ``ok``), (point, its ok record) when only its accuracy is
    missing (``lacks``)."""
    latest = store.latest()
    todo: list[tuple[GridPoint, dict[str, Any] | None]] = []
    for gp in points:
        rec = latest.get(gp.hash)
        if rec is None or rec.get("status") != "ok":
            todo.append((gp, None))
        elif lacks is not None and lacks(rec):
            todo.append((gp, rec))
    return todo
