"""``tosa-bench data make shapes|rooms``: the embedded datasets, generated on disk."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from tosa_bench.cli.common import Commands, app, guarded, out

data_app = Commands(help="Generate the embedded datasets in the real on-disk formats.\n\n"
                         "Example: tosa-bench data make rooms --out data/rooms --size 48", no_args_is_help=True)
app.add_typer(data_app, name="data")


class Kind(str, Enum):
    shapes = "shapes"
    rooms = "rooms"


@data_app.command("make")
@guarded
def make_command(
    kind: Annotated[Kind, typer.Argument(help="shapes: ImageFolder JPEG classification set; rooms: NYU-style v7.3 .mat depth set.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (created; must be new or empty).")],
    n: Annotated[Optional[int], typer.Option(min=1, help="Images (default 200 shapes, 16 rooms).")] = None,
    size: Annotated[Optional[int], typer.Option(min=16, help="shapes: image side (224); rooms: image height (480, width 4/3 of it).")] = None,
    seed: Annotated[int, typer.Option(help="Generator seed (same seed, same files).")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing set made by this command (written beside it, then swapped in).")] = False,
) -> None:
    """Write a generated dataset that `--imagenet` (shapes) or `--nyu` (rooms) accepts.

    shapes has 10 classes: evaluate it with a 10-class model such as test_tiny (the DeiT
    models have 1000).

    Example: tosa-bench data make shapes --out data/shapes"""
    from tosa_bench.data.synthetic import make_dataset

    path = make_dataset(kind.value, out_dir, n=n, size=size, seed=seed, overwrite=overwrite)
    flag = "--imagenet" if kind is Kind.shapes else "--nyu"
    out.print(f"wrote {kind.value} to {path}  (use: {flag} {path})", markup=False, highlight=False)
