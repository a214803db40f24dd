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
  input's under ``merged_envs`` and their paths under ``merged_from``) and the tables;
- the output must be a new or empty directory (the rules of a new sweep's ``--out``,
  :func:`~tosa_bench.sweep.session.check_out_dir`) and is locked while it is written; an
  input that another process is still writing (its lock is held) is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tosa_bench.errors import OptionError, RunStateError
from tosa_bench.results import load_run
from tosa_bench.results.store import ENV, RECORDS, SUITE, RunStore
from tosa_bench.sweep import lock
from tosa_bench.sweep.session import check_out_dir, claim_out_dir, read_resolved, resolved_suite_text, write_tables


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
        raise OptionError("merge: give at least one run directory")
    check_out_dir(Path(out), resumable=False)  # before reading the inputs: a bad --out costs nothing
    runs = [load_run(p) for p in inputs]
    for r in runs:
        busy = lock.holder(r.path)
        if busy is not None:
            raise RunStateError(f"merge: {r.path} is still being written ({lock.describe(busy)}); merge it when it is done")
    if len({r.path.resolve() for r in runs}) != len(runs):
        raise OptionError("merge: a run directory is given twice")
    first_suite, first_grid, _, _ = read_resolved(RunStore(runs[0].path))
    hashes = {gp.hash for gp in first_grid}
    for r in runs[1:]:
        _, grid, _, _ = read_resolved(RunStore(r.path))
        if {gp.hash for gp in grid} != hashes:
            raise RunStateError(f"merge: {r.path} holds another grid than {runs[0].path} (different {SUITE} points)")
    chosen: dict[str, tuple[dict[str, Any], Path]] = {}
    for r in runs:
        if r.bad_lines:
            raise RunStateError(f"merge: {r.path / RECORDS} has unreadable lines {r.bad_lines[:5]}")
        for rec in r.records:  # the latest record per config hash
            h = rec["config_hash"]
            if h not in chosen:
                chosen[h] = (rec, r.path)
                continue
            old, where = chosen[h]
            if _same(old, rec):
                continue
            if rec.get("status") == "ok" and old.get("status") != "ok":
                chosen[h] = (rec, r.path)
            elif old.get("status") == "ok" and rec.get("status") != "ok":
                continue
            else:
                raise RunStateError(f"merge: config {h} has different results in {where} and {r.path}; refusing to choose one")
    claim_out_dir(Path(out), resumable=False)
    target = RunStore(out)
    order = {gp.hash: i for i, gp in enumerate(first_grid)}
    merged = sorted((rec for rec, _ in chosen.values()), key=lambda r: order.get(r["config_hash"], len(order)))
    envs = [r.env or {} for r in runs]
    target.write_json(ENV, {**envs[0], "merged_from": [str(r.path) for r in runs], "merged_envs": envs})
    target.write_text(SUITE, resolved_suite_text(first_suite, first_grid, None, target.path.name, len(first_grid)))
    target.open_for_append()
    for rec in merged:
        target.append(rec)
    write_tables(target)
    return MergeSummary(len(merged), len(first_grid), [gp.hash for gp in first_grid if gp.hash not in chosen])

