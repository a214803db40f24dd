"""Join shard outputs (``--shard i/n`` runs, e.g. from a Slurm job array) into one run.

Rules:

- every input must be a run directory of the same grid (the ``[[points]]`` of their
  ``suite.toml`` are compared as sets of config hashes; the shard spec may differ);
- per config hash, each input's latest record is taken. The same hash in two inputs is
  accepted only when the records are identical (the same shard copied twice) or when
  exactly one of them is ``ok`` (a shard re-run that fixed an ``error``/``oom``: the ok
  one wins). Two different results for one configuration are refused, naming the hash
  and both directories: a merge must never pick one measurement silently;
- the output gets ``records.jsonl`` (merged records, grid order), ``suite.toml`` (the
  grid without a shard), ``env.json`` (the first input's environment, with every
  input's under ``merged_envs`` and their paths under ``merged_from``) and the tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tosa_bench.sweep.session import read_resolved, resolved_suite_text, write_tables
from tosa_bench.sweep.store import ENV, RunStore, latest_by_hash


@dataclass
class MergeSummary:
    """``records`` written, ``grid`` size, ``missing`` config hashes of the grid not in any input."""

    records: int
    grid: int
    missing: list[str]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def merge_runs(inputs: Sequence[str | Path], out: str | Path) -> MergeSummary:
    """Merge the run directories ``inputs`` into a new run at ``out`` (module docstring)."""
    if not inputs:
        raise ValueError("merge: give at least one run directory")
    stores = [RunStore.existing(p) for p in inputs]
    if len({s.path.resolve() for s in stores}) != len(stores):
        raise ValueError("merge: a run directory is given twice")
    first_suite, first_grid, _, _ = read_resolved(stores[0])
    hashes = {gp.hash for gp in first_grid}
    for s in stores[1:]:
        _, grid, _, _ = read_resolved(s)
        if {gp.hash for gp in grid} != hashes:
            raise ValueError(f"merge: {s.path} holds another grid than {stores[0].path} (different suite.toml points)")
    chosen: dict[str, tuple[dict[str, Any], Path]] = {}
    for s in stores:
        loaded = s.load()
        if loaded.bad_lines:
            raise ValueError(f"merge: {s.records_path} has unreadable lines {loaded.bad_lines[:5]}")
        for h, rec in latest_by_hash(loaded.records).items():
            if h not in chosen:
                chosen[h] = (rec, s.path)
                continue
            old, where = chosen[h]
            if _same(old, rec):
                continue
            if rec.get("status") == "ok" and old.get("status") != "ok":
                chosen[h] = (rec, s.path)
            elif old.get("status") == "ok" and rec.get("status") != "ok":
                continue
            else:
                raise ValueError(f"merge: config {h} has different results in {where} and {s.path}; refusing to choose one")
    target = RunStore.create(out)
    order = {gp.hash: i for i, gp in enumerate(first_grid)}
    merged = sorted((rec for rec, _ in chosen.values()), key=lambda r: order.get(r["config_hash"], len(order)))
    envs = [s.read_json(ENV) or {} for s in stores]
    target.write_json(ENV, {**envs[0], "merged_from": [str(s.path) for s in stores], "merged_envs": envs})
    target.write_text("suite.toml", resolved_suite_text(first_suite, first_grid, None, target.path.name, len(first_grid)))
    target.open_for_append()
    for rec in merged:
        target.append(rec)
    write_tables(target)
    return MergeSummary(len(merged), len(first_grid), [gp.hash for gp in first_grid if gp.hash not in chosen])

