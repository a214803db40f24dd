"""Shared pieces of the command line: the Typer app, option types, error guard.

Commands live in one small module each (``profile``, ``sweep``, ``data``, ``evaluate``)
and register on ``app``; heavy imports (torch) happen inside command bodies so that
``tosa-bench --help`` stays fast.

Every command is wrapped in :func:`guarded`, the CLI's error contract:

* bad input (:class:`tosa_bench.errors.UserInputError` and its subclasses: unknown model,
  bad keep, checkpoint that does not fit, unreadable dataset, malformed suite, output path
  that cannot be written) -> ``error: <first line>`` on stderr, exit code 2;
* a usage error found while the command line is parsed (``--keep abc``, an unknown
  option, a missing argument) -> the same one ``error:`` line and exit code 2, naming
  the option, the value and what is allowed (:class:`OneLineErrors`);
* Ctrl-C -> ``interrupted``, exit code 130;
* anything else is a bug in tosa-bench -> the traceback is written to a file (see
  :func:`traceback_dir`), one line on stderr names it, exit code 1.

``--debug`` (on every command, or ``tosa-bench --debug CMD``) prints the traceback too.
Messages are printed verbatim (no rich markup: ``[grid]`` stays ``[grid]``).

Commands and groups are made through :class:`Commands`, whose classes make help read
well at any terminal width: paragraphs reflowed (:func:`reflow`), flags shown without a
type. Each help text ends with one ``Example: tosa-bench ...`` line.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from tosa_bench.errors import OptionError, OutputPathError, UserInputError, first_line

#: Typer's own usage-error class (it ships a vendored click; found through a public class)
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

#: what a value of an option must be, added to Typer's own complaint about it
ALLOWED = {
    "keep": "a keep ratio in (0, 1]",
    "batch_size": "an integer >= 1",
    "eval_batch_size": "an integer >= 1",
    "limit": "an integer >= 1",
    "workers": "an integer >= 0",
    "tome_r": "an integer >= 0",
    "seed": "an integer",
    "warmup": "an integer >= 0",
    "repeats": "an integer >= 1",
    "time_budget": "a number of seconds > 0",
    "tolerance": "a relative tolerance in (0, 10)",
    "crop_pct": "a ratio in (0, 1]",
    "n": "an integer >= 1",
    "size": "an integer >= 16",
}


#: a line that starts a list item ("- a", "* b", "1. c"): kept on a line of its own
_LIST_ITEM = re.compile(r"(?:[-*\u2022]|\d+[.)])\s")


def reflow(text: str) -> str:
    """``text`` (a command's help) with the line breaks typed inside prose joined, so that
    rich wraps it at the terminal's width instead of breaking where the source was wrapped
    (lines cut short at 120 columns, ragged at 80).

    Kept as typed: blank lines between paragraphs, list items and indented lines (a list,
    with its continuation lines indented deeper; keep such lines under 78 characters, the
    text width of an 80-column terminal, or rich wraps them back to the margin).
    """
    paragraphs = re.split(r"\n[ \t]*\n", inspect.cleandoc(text))
    return "\n\n".join(_join_prose(p) for p in paragraphs if p.strip())


def _join_prose(paragraph: str) -> str:
    lines: list[str] = []
    for raw in paragraph.splitlines():
        if lines and _is_prose(raw) and _is_prose(lines[-1]):
            lines[-1] += " " + raw.strip()
        else:
            lines.append(raw.rstrip())
    return "\n".join(lines)


def _is_prose(line: str) -> bool:
    """A line of running text: not indented, not a list item."""
    return not line[:1].isspace() and not _LIST_ITEM.match(line)


def _as_flags(params: Iterable[Any]) -> None:
    """Show boolean flags by their names alone (``--quick``, ``--fuse/--no-fuse``).

    Typer's rich help prints every option's type in a column of its own, flags included
    (``--quick <bool>``), although a flag takes no value; it prints a metavar instead of
    the type when one is set, so an empty metavar leaves the column blank. Options that
    take values keep their type.
    """
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class _ReadableHelp:
    """Mixed into the command and group classes of this CLI: the help text reflowed
    (:func:`reflow`) and flags shown as flags (:func:`_as_flags`), the help option too."""

    def __init__(self, *args: Any, help: Optional[str] = None, **kwargs: Any) -> None:  # noqa: A002 (click's name)
        super().__init__(*args, help=reflow(help) if help else help, **kwargs)  # type: ignore[call-arg]
        _as_flags(self.params)  # type: ignore[attr-defined]

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            _as_flags([option])
        return option


class HelpCommand(_ReadableHelp, TyperCommand):
    """A command of this CLI (see :class:`_ReadableHelp`)."""


class HelpGroup(_ReadableHelp, TyperGroup):
    """A command group of this CLI (see :class:`_ReadableHelp`)."""


class Commands(typer.Typer):
    """``typer.Typer`` whose commands and groups use :class:`HelpCommand` and
    :class:`HelpGroup`, so that a command added with ``@app.command`` (or a group made
    with ``Commands(...)``) gets readable help without asking; tests/test_help.py renders
    every page at 80 and 120 columns."""

    def __init__(self, *, cls: type[TyperGroup] = HelpGroup, **kwargs: Any) -> None:
        super().__init__(cls=cls, **kwargs)

    def command(self, name: Optional[str] = None, *, cls: Optional[type[TyperCommand]] = None, **kwargs: Any):  # type: ignore[override]
        return super().command(name, cls=cls or HelpCommand, **kwargs)


class OneLineErrors(HelpGroup):
    """The root command: a usage error found while parsing (a value that is not a number,
    a missing or unknown option) is one ``error:`` line and exit 2, like every other bad
    input, instead of a framed help box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":
                sys.exit(2)  # the help is already printed
            say(usage_line(e, argv), prefix="error:", style="bold red")
            sys.exit(2)
        except typer.Abort:
            err.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def usage_line(e: Exception, argv: list[str]) -> str:
    """One line for a usage error: the option, the value given, what was wrong and what
    is allowed, and where the full list of options is."""
    param = getattr(e, "param", None)
    ctx = getattr(e, "ctx", None)
    where = f" (see: {ctx.command_path} --help)" if ctx is not None else " (see: tosa-bench --help)"
    if param is None or type(e).__name__ != "BadParameter":
        return _one_line(e.format_message()) + where  # type: ignore[attr-defined]
    opt = max(param.opts, key=len) if param.opts else param.name
    given = _given(param.opts, argv)
    message = _one_line(getattr(e, "message", "") or e.format_message())  # type: ignore[attr-defined]
    allowed = ALLOWED.get(param.name or "")
    return (f"{opt}{' ' + repr(given) if given is not None else ''}: {message}"
            + (f"; expected {allowed}" if allowed else "") + where)


def _one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces (and
    without the "Value error, " that Typer's validation puts before a message)."""
    return " ".join(str(text).replace("Value error, ", "").split())


def _given(opts: list[str], argv: list[str]) -> Optional[str]:
    """The value typed after one of ``opts`` in ``argv`` (for a repeated option, the last
    one; None when it cannot be found)."""
    found = None
    for i, a in enumerate(argv):
        for o in opts:
            if a == o and i + 1 < len(argv):
                found = argv[i + 1]
            elif a.startswith(o + "="):
                found = a[len(o) + 1:]
    return found


app = Commands(
    cls=OneLineErrors,
    help="Benchmark and profile token reduction (ToSA, ToMe, EViT) in Vision Transformers.\n\n"
         "Example: tosa-bench sweep --keep 0.5",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

out = Console()
err = Console(stderr=True)


#: --variant takes any method of the registry (checked when the command runs, so methods
#: registered after import count; naming them here would import torch for --help)
VARIANT_HELP = "Token-reduction method: a variant listed by `tosa-bench models`."
#: the default --variant of the commands that look at one method (profile, show-tokens): the
#: method under study, the registry's match target; a literal for the same reason as above
#: (tests/test_cli.py checks it against the registry)
STUDIED_VARIANT = "tosa"
# One vocabulary for every command (README "Options"): the same name and help text for
# the same thing wherever it appears.
PLACEMENT_HELP = "ToSA/random selector blocks: alternate, alternate-even, second-half, all, last:K, or indices like 3,5,7."
SEED_HELP = "Seed of the random control's token draws."
IMPORTANCE_HELP = "ToSA importance rule: mean (attention received, over heads and queries; default) or cls (the CLS row only)."
FUSE_HELP = "EViT: fuse the dropped tokens into one (--no-fuse drops them)."
CHECKPOINT_HELP = "Backbone weights (timm/DeiT .pth or .safetensors), read tensors-only."
SELECTOR_HELP = "Trained ToSA selector weights."
DEPTH_CHECKPOINT_HELP = "Depth model weights (backbone.* + head.*, as saved by tosa_bench.tasks.save_depth_checkpoint)."
WORKERS_HELP = "DataLoader worker processes (default: CPU cores - 1, at most 8)."


COMPILE_HELP = "torch.compile the model and its dense twin (mode: --compile-mode, default 'default'); compile time is recorded, never timed."
COMPILE_MODE_HELP = ("eager, default, max-autotune or reduce-overhead; comma-separated or repeated for several "
                     "(e.g. eager,default: a point of each, so eager and compiled sit in one run).")


def compile_modes(compile: bool, modes: Optional[list[str]], option: str = "--compile-mode") -> Optional[tuple[str, ...]]:
    """The compile modes asked for: ``--compile-mode`` values (comma lists allowed), else
    ("default",) for a bare ``--compile``, else None (the suite's own). A mode that is not
    one raises OptionError naming the choices."""
    from tosa_bench.measure.spec import COMPILE_MODES, EAGER

    if not modes:
        return ("default",) if compile else None
    given = [m.strip() for text in modes for m in text.split(",") if m.strip()]
    bad = [m for m in given if m not in (EAGER, *COMPILE_MODES)]
    if bad or not given:
        raise OptionError(f"{option}: expected {EAGER} or a torch.compile mode ({', '.join(COMPILE_MODES)}), got {(bad or modes)[0]!r}")
    if compile and given == [EAGER]:
        raise OptionError(f"--compile with {option} eager: eager is no compile; leave one of them out")
    return tuple(dict.fromkeys(given))


def deprecated_alias(value, old_value, new: str, old: str):
    """The value of option ``new``, taking the deprecated ``old`` name's value (with a
    note saying so) when only that was given; both given is an OptionError."""
    if old_value is None:
        return value
    if value is not None:
        raise OptionError(f"{old} is the old name of {new}; give only {new}")
    note_later(f"{old} is deprecated; use {new}")
    return old_value


#: notes held until the command ends (printed unless it ends in a bad-input error, whose
#: one line must stay the only one)
_NOTES: list[str] = []


def note_later(message: str) -> None:
    """Queue a ``note:`` line (e.g. a deprecated option name) for the end of the command."""
    _NOTES.append(message)


def _flush_notes(show: bool) -> None:
    notes, _NOTES[:] = list(_NOTES), []
    for message in notes if show else ():
        say(message, prefix="note:")


def point_options(variant: str, keep: Optional[float], cfg, *, placement: Optional[str] = None, tome_r: Optional[int] = None,
                  evit_loc: Optional[str] = None, fuse: bool = True, seed: int = 0, importance: Optional[str] = None) -> dict:
    """Build options of one point from a command's method flags: the variant's registry
    entry says what ``keep`` and each flag mean for it (flags it has no use for are
    ignored)."""
    from tosa_bench.methods.registry import Knobs, get

    if keep is not None:
        parse_keep(keep, "--keep")  # whatever the variant makes of it, a keep is a share in (0, 1]
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
        _NOTES.clear()
        try:
            result = fn(*args, **kwargs)
            _flush_notes(True)
            return result
        except UserInputError as e:
            _flush_notes(False)
            if debug:
                traceback.print_exc(file=sys.stderr)
            say(first_line(e), prefix="error:", style="bold red")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            _flush_notes(True)
            raise  # typer.Exit from the command body, Typer's usage errors (BadParameter): theirs
        except Exception as e:
            _flush_notes(True)
            _report_bug(e, debug)
            raise typer.Exit(1) from None

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), debug_param])  # type: ignore[attr-defined]
    return wrapper


def check_output_file(path: Path, option: str) -> None:
    """OutputPathError (naming ``option``) unless ``path`` can be a file: not a directory,
    an existing file writable, and its nearest existing ancestor a directory we may write
    in. Cheap and without side effects; call it before any work, so that a result is
    never measured only to be lost."""
    if path.is_dir():
        raise OutputPathError(f"{option} {path}: is a directory, expected a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{option} {path}: the file is read-only; choose another path")
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{option} {path}: {parent} is a file, not a directory; expected a path inside a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputPathError(f"{option} {path}: cannot write in {parent} (read-only); choose another path")
            break


def check_output_dir(path: Path, option: str) -> None:
    """OutputPathError (naming ``option``) unless ``path`` can be a directory we write
    files into: an existing directory writable, or a new one whose nearest existing
    ancestor is a writable directory. Cheap, no side effects; call it before any work."""
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path}: is a file, expected a directory")
    for target in (path, *path.parents):
        if target.exists():
            if not target.is_dir():
                raise OutputPathError(f"{option} {path}: {target} is a file, not a directory; expected a path inside a directory")
            if not os.access(target, os.W_OK | os.X_OK):
                raise OutputPathError(f"{option} {path}: cannot write in {target} (read-only); choose another path")
            return


def parse_keep(text: str | float, option: str = "--keep") -> float:
    """A keep ratio typed as text ('0.5') -> float in (0, 1]; OptionError naming the option
    and the allowed range otherwise (NaN, 0, negatives, > 1, not a number)."""
    from tosa_bench.methods.base import validate_keep

    try:
        value = float(text)
    except (TypeError, ValueError):
        raise OptionError(f"{option}: keep must be a number in (0, 1], got {text!r}") from None
    try:
        return validate_keep(value)
    except OptionError:
        raise OptionError(f"{option}: keep must be in (0, 1], got {text!r}") from None


#: the largest image side any command accepts, in pixels (far above any ViT in use;
#: whether a size fits memory is checked separately, with an estimate)
MAX_SIDE = 16384


def parse_size(text: str, option: str = "--img-size", *, square: bool = False) -> tuple[int, int]:
    """An image size typed as 'N' (square) or 'HxW' -> (height, width) in pixels, each in
    1..MAX_SIDE; with ``square`` a non-square size is refused. OptionError otherwise."""
    shape = "N" if square else "N or HxW"
    parts = str(text).strip().lower().split("x")
    try:
        if len(parts) not in (1, 2):
            raise ValueError
        h, w = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise OptionError(f"{option}: expected an image size in pixels as {shape} (e.g. 224{'' if square else ' or 480x640'}), got {text!r}") from None
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise OptionError(f"{option}: height and width must be in 1..{MAX_SIDE} pixels (e.g. 224{'' if square else ' or 480x640'}), got {text!r}")
    if square and h != w:
        raise OptionError(f"{option}: this command needs a square size N (e.g. 224), got {text!r}")
    return h, w


def default_workers() -> int:
    """DataLoader workers when none are given (:func:`tosa_bench.data.loader.default_workers`:
    CPU cores - 1, at most 8); imported lazily so that --help does not import torch."""
    from tosa_bench.data.loader import default_workers as rule

    return rule()


#: the one default batch size rule of every command: 8 images on a CPU, 64 on CUDA
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}
BATCH_HELP = "Images per batch (default: 8 on a CPU, 64 on CUDA)."


def default_batch_size(device: str) -> int:
    """The default batch of every command for a resolved ``device`` (``cpu``, ``cuda:1``...)."""
    return DEFAULT_BATCH["cuda" if device.startswith("cuda") else "cpu"]


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


def json_safe(obj):
    """``obj`` with every NaN or infinite float replaced by None (recursively), so the
    JSON a command prints is valid JSON: a bare ``NaN`` is not, and breaks the readers
    (jq, JavaScript, strict parsers) that the ``--json`` output exists for."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


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
