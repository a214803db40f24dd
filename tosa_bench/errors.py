"""The user-input error family: the one kind of failure the command line reports as a
plain one-line message with exit code 2.

Why a family of our own: a ``ValueError`` raised by a bug deep in torch or pandas looks
exactly like one raised because the user typed ``--keep 1.5``. Code that checks input
raises one of the classes below; the CLI (:mod:`tosa_bench.cli.common`) turns exactly
these into ``error: <message>`` and exit 2, and treats anything else as a bug (exit 1,
traceback written to a file, printed with ``--debug``).

Every class subclasses ``ValueError`` as well, so library callers that catch
``ValueError`` keep working. Messages are one line that names the input (option, file,
key) and, where it helps, what is allowed; they are printed verbatim (no markup).

This module imports nothing from the package: every layer may import it.
"""

from __future__ import annotations

import sys
from typing import Callable


class UserInputError(ValueError):
    """Input that cannot be used as given (base of the family)."""


class OptionError(UserInputError):
    """A bad option or argument value: keep, placement, model or variant name, batch size..."""


class CheckpointError(UserInputError):
    """Weights that cannot be read or do not fit the model (wrong keys or shapes, not a
    tensors-only file, a selector made for another model or placement)."""


class DatasetError(UserInputError):
    """A dataset path or file that is missing, empty or malformed."""


class SuiteError(UserInputError):
    """A suite file (or a command-line override of it) that does not follow the schema."""


class OutputPathError(UserInputError):
    """An output file or directory that cannot be created or written, or that already
    holds results which would be overwritten."""


class RunStateError(UserInputError):
    """A run directory in a state the command cannot work with (not a run, another grid,
    two different results for one configuration)."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of ``err``'s message, else its type name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def run_script(main: "Callable[[], int]") -> int:
    """Run a benchmark script's ``main`` the way the CLI treats input errors: a
    :class:`UserInputError` (a dtype the device cannot run, no CUDA, a bad suite or OUT)
    becomes ``error: <message>`` on stderr and exit code 2; anything else propagates."""
    try:
        return main()
    except UserInputError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
