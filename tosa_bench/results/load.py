"""The one way to read a run directory: :func:`load_run` (records, env, damage) and
:func:`load_frame` (the same as the tables' pandas DataFrame).

Why one entry point: the report, the tables, ``merge`` and the figures must agree on
which record stands for a configuration (the last one per config hash, so a point
re-run by ``--resume`` replaces its failed attempt) and on what a damaged
``records.jsonl`` means (a torn last line and unreadable lines are skipped and
reported, never fatal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tosa_bench.results.store import ENV, RunStore, latest_by_hash

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


@dataclass
class RunData:
    """A run directory as read: ``records`` (the latest record per config hash, in order
    of first appearance), ``env`` (its env.json, None if missing or unreadable),
    ``torn_tail`` (the last line was incomplete and skipped), ``bad_lines`` (1-based
    numbers of other skipped lines)."""

    path: Path
    records: list[dict[str, Any]]
    env: dict[str, Any] | None = None
    torn_tail: bool = False
    bad_lines: list[int] = field(default_factory=list)


def load_run(run_dir: str | Path) -> RunData:
    """Read ``run_dir``; :class:`~tosa_bench.errors.RunStateError` if it is not a run directory."""
    store = RunStore.existing(run_dir)
    loaded = store.load()
    return RunData(store.path, list(latest_by_hash(loaded.records).values()), store.read_json(ENV),
                   loaded.torn_tail, loaded.bad_lines)


def load_frame(run_dir: str | Path) -> "pd.DataFrame":
    """The records of ``run_dir`` as :func:`tosa_bench.results.layout.frame` lays them out
    (one row per record and grid keep, ratio columns to dense; empty for no records)."""
    from tosa_bench.results.layout import frame  # pandas: imported only when a frame is asked for

    return frame(load_run(run_dir).records)
