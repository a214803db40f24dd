"""``tosa-bench sweep --launcher slurm|local`` (submit the shards) and ``tosa-bench status``
(where they stand; merge when all are done). The logic is :mod:`tosa_bench.sweep.launch`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tosa_bench.cli.common import app, guarded, out, say


def submit(suite: Any, out_dir: Optional[Path], spec: Any) -> None:
    """Submit ``suite`` as shards (``spec``), print the job ids and where things go."""
    from tosa_bench.sweep.launch import launch
    from tosa_bench.sweep.session import RUNS_ROOT, default_run_id

    root = out_dir or Path(RUNS_ROOT) / default_run_id(suite, None)
    record, _ = launch(suite, root, spec)
    ids = ", ".join(s["job_id"] for s in record["shards"])
    out.print(f"submitted {len(record['shards'])} {spec.launcher} jobs ({record['grid_points']} points): {ids}",
              highlight=False, markup=False, soft_wrap=True)
    out.print(f"shards: {root / 'shards'}; logs: {root / 'logs'}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"follow with: tosa-bench status {root}  (merges the shards into {root} when all are done)",
              highlight=False, markup=False, soft_wrap=True)


def show_status(root: Path) -> bool:
    """Print each shard's state; merge into ``root`` when all are done. True when merged."""
    from rich.table import Table

    from tosa_bench.sweep.launch import merge_launch, read_launch, shard_states

    record = read_launch(root)
    states = shard_states(root)
    t = Table(title=f"{root}: {record['launcher']} launch of {record['grid_points']} points")
    for c in ("shard", "job", "state", "ok", "points", "not ok"):
        t.add_column(c, justify="right" if c in ("ok", "points", "not ok") else "left")
    for s in states:
        t.add_row(s.shard, s.job_id, s.state, str(s.ok), str(s.total), str(s.not_ok))
    out.print(t)
    if all(s.state == "done" for s in states):
        merge_launch(root)
        out.print(f"all shards done: merged into {root} (tosa-bench report {root}; tosa-bench plot {root})",
                  highlight=False, markup=False, soft_wrap=True)
        return True
    waiting = [s for s in states if s.state != "done"]
    say(f"{len(waiting)} shard(s) not done yet ({', '.join(sorted({s.state for s in waiting}))}); run this again later", prefix="note:")
    return False


@app.command("status")
@guarded
def status_command(
    run_dir: Annotated[Path, typer.Argument(help="A launch directory (sweep --launcher ... --out DIR).")],
) -> None:
    """Where the shards of a launched sweep stand; when all are done, merge them into the
    launch directory (once), which `report` and `plot` then read like any run.

    Example: tosa-bench status runs/paper"""
    show_status(run_dir)
