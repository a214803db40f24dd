"""Shared pieces of the command line: the Typer app, option types, error guard.

Commands live in one small module each (``profile``, ``sweep``, ``data``, ``evaluate``)
and register on ``app``; heavy imports (torch) happen inside command bodies so that
``tosa-bench --help`` stays fast.

Every command turns bad input (``ValueError`` and its subclasses: unknown model, bad
keep, checkpoint that does not fit, unreadable dataset, malformed suite) into one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
from enum import Enum
from typing import Callable, Optional

import typer
from rich.console import Console

app = typer.Typer(
    help="Benchmark and profile token reduction (ToSA, ToMe, EViT) in Vision Transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

out = Console()
err = Console(stderr=True)


class Variant(str, Enum):
    dense = "dense"
    tosa = "tosa"
    tome = "tome"
    evit = "evit"
    random = "random"


class DType(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def guarded(fn: Callable) -> Callable:
    """Turn input errors into ``error: ...`` on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def parse_int_list(text: Optional[str], name: str) -> Optional[list[int]]:
    """'3,6,9' -> [3, 6, 9]; ValueError naming the option otherwise."""
    if text is None:
        return None
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated block indices like 3,6,9, got {text!r}") from None


@app.callback()
def _root() -> None:
    """Benchmark and profile token reduction (ToSA, ToMe, EViT) in Vision Transformers."""
