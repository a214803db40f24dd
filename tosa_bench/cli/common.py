"""Shared pieces of the command line: the Typer app, option types, error guard.

Commands live in one small module each (``profile``, ``sweep``, ``data``, ``evaluate``)
and register on ``app``; heavy imports (torch) happen inside command bodies so that
``tosa-bench --help`` stays fast.

Every command is wrapped in :func:`guarded`, the CLI's error contract:

* bad input (:class:`tosa_bench.errors.UserInputError` and its subclasses: unknown model,
  bad keep, checkpoint that does not fit, unreadable dataset, malformed suite, output path
  that cannot be written) -> ``error: <first line>`` on stderr, exit code 2;
* Ctrl-C -> ``interrupted``, exit code 130;
* anything else is a bug in tosa-bench -> the traceback is written to a file (see
  :func:`traceback_dir`), one line on stderr names it, exit code 1.

``--debug`` (on every command, or ``tosa-bench --debug CMD``) prints the traceback too.
Messages are printed verbatim (no rich markup: ``[grid]`` stays ``[grid]``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

import typer
from rich.console import Console
from rich.text import Text

from tosa_bench.errors import OptionError, OutputPathError, UserInputError, first_line

app = typer.Typer(
    help="Benchmark and profile token reduction (ToSA, ToMe, EViT) in Vision Transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

out = Console()
err = Console(stderr=True)


#: --variant takes any method of the registry (checked when the command runs, so methods
#: registered after import count; naming them here would import torch for --help)
VARIANT_HELP = "Token-reduction method: a variant listed by `tosa-bench models`."


def point_options(variant: str, keep: Optional[float], cfg, *, placement: Optional[str] = None, tome_r: Optional[int] = None,
                  evit_loc: Optional[str] = None, fuse: bool = True, seed: int = 0, importance: Optional[str] = None) -> dict:
    """Build options of one point from a command's method flags: the variant's registry
    entry says what ``keep`` and each flag mean for it (flags it has no use for are
    ignored)."""
    from tosa_bench.methods.base import validate_keep
    from tosa_bench.methods.registry import Knobs, get

    if keep is not None:
        validate_keep(keep)  # whatever the variant makes of it, a keep is a share in (0, 1]
    locations = parse_int_list(evit_loc, "--evit-loc")
    knobs = Knobs(placements=(placement,) if placement is not None else (), importance=importance, seed=seed,
                  tome_r=(tome_r,) if tome_r is not None else (), evit_locations=(tuple(locations),) if locations else (), fuse=fuse)
    return get(variant).natural_options(keep, cfg, knobs)


class DType(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


#: set by ``tosa-bench --debug CMD`` (the root callback); ``CMD --debug`` works per call
_DEBUG = {"on": False}
DEBUG_HELP = "On an error, also print the full traceback (bugs are always written to a file)."


def say(message: str, prefix: str = "", style: str = "") -> None:
    """One line on stderr, printed verbatim (no markup, no highlighting, no wrapping);
    only ``prefix`` (e.g. ``error:``) is styled."""
    text = Text.assemble((prefix, style), " " if prefix else "", message) if prefix else Text(message)
    err.print(text, highlight=False, soft_wrap=True)


def traceback_dir() -> Path:
    """Where bug tracebacks go: ``$XDG_CACHE_HOME/tosa-bench/tracebacks`` (default
    ``~/.cache/tosa-bench/tracebacks``), else ``<temp dir>/tosa-bench/tracebacks``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tosa-bench" / "tracebacks"


def write_traceback(text: str) -> Optional[Path]:
    """Write ``text`` to ``<traceback_dir>/<UTC stamp>-<pid>.txt`` (the temp dir if that
    is not writable); None if nothing could be written."""
    name = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}-{os.getpid()}.txt"
    for folder in (traceback_dir(), Path(tempfile.gettempdir()) / "tosa-bench" / "tracebacks"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def _report_bug(e: BaseException, debug: bool) -> None:
    from tosa_bench import __version__

    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    header = f"tosa-bench {__version__}, Python {sys.version.split()[0]}\ncommand: {' '.join(sys.argv)}\n\n"
    path = write_traceback(header + tb)
    if debug:
        sys.stderr.write(tb)
    where = f"traceback written to {path}" if path is not None else "the traceback could not be written to a file"
    say(f"{type(e).__name__}: {first_line(e)}; {where} (rerun with --debug to print it)",
        prefix="internal error (a bug in tosa-bench):", style="bold red")


def guarded(fn: Callable) -> Callable:
    """The error contract of a command (see the module docstring); adds ``--debug``.

    The wrapped function gets a ``debug`` option in its signature (so Typer shows and
    parses ``--debug``); the wrapper takes it off before calling ``fn``.
    """
    sig = inspect.signature(fn, eval_str=True)
    if "debug" in sig.parameters:
        raise TypeError(f"{fn.__name__}: guarded adds the 'debug' parameter itself")
    debug_param = inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                    default=typer.Option(False, "--debug", help=DEBUG_HELP))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = bool(kwargs.pop("debug", False)) or _DEBUG["on"]
        try:
            return fn(*args, **kwargs)
        except UserInputError as e:
            if debug:
                traceback.print_exc(file=sys.stderr)
            say(first_line(e), prefix="error:", style="bold red")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer.Exit from the command body, Typer's usage errors (BadParameter): theirs
        except Exception as e:
            _report_bug(e, debug)
            raise typer.Exit(1) from None

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), debug_param])  # type: ignore[attr-defined]
    return wrapper


def check_output_file(path: Path, option: str) -> None:
    """OutputPathError (naming ``option``) unless ``path`` can be a file: not a directory,
    and its nearest existing ancestor a directory. Cheap; call it before any work."""
    if path.is_dir():
        raise OutputPathError(f"{option} {path}: is a directory, expected a file path")
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{option} {path}: {parent} is a file, not a directory; expected a path inside a directory")
            break


@contextlib.contextmanager
def output_file(path: Path, option: str) -> Iterator[TextIO]:
    """``path`` opened for writing text (parent folders created); OutputPathError naming
    ``option`` if it cannot be created or written."""
    check_output_file(path, option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            yield fh
    except OSError as e:
        raise OutputPathError(f"{option} {path}: cannot write ({e.strerror or e})") from None


def parse_int_list(text: Optional[str], name: str) -> Optional[list[int]]:
    """'3,6,9' -> [3, 6, 9]; OptionError naming the option otherwise."""
    if text is None:
        return None
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise OptionError(f"{name}: expected comma-separated block indices like 3,6,9, got {text!r}") from None


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP)) -> None:
    """Benchmark and profile token reduction (ToSA, ToMe, EViT) in Vision Transformers."""
    _DEBUG["on"] = debug
