"""Every help page as a user reads it, at 80 and 120 columns.

The pages are rendered in-process (Typer's CliRunner; ``COLUMNS`` sets rich's width
there exactly as in a terminal, which ``test_in_process_help_is_what_a_terminal_shows``
checks against a real ``python -m tosa_bench``): the whole file takes a few seconds.

What is checked, on ``tosa-bench --help`` and on every command's and group's help:

* no sentence is cut short by a line break that was typed into the source (a docstring
  hard-wrapped at 100 columns shows as half-empty lines at 120 and ragged ones at 80),
  and no list line is so long that rich wraps it back to the margin;
* boolean options read as flags (``--quick``), never as ``--quick <bool>``;
* the description ends with one ``Example: tosa-bench ...`` line, and that command line
  parses (its command and options exist, its values have the right types);
* every file a help text names (``something.py``, ``docs/gate.md``) exists.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import typer
from typer.testing import CliRunner

from tosa_bench.cli import app

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tosa_bench"
WIDTHS = (80, 120)
PROG = "tosa-bench"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: a line that starts a list item on purpose ("- a", "* b", "1. c")
LIST_ITEM = re.compile(r"^(?:[-*•]|\d+[.)])\s")
#: how many columns of the available width a line may leave free before it counts as cut
#: short (rich wraps greedily, so a soft-wrapped line leaves less than the next word; the
#: slack absorbs the column rich keeps free beside a cell's default/required notes)
SLACK = 2
#: what the pages are rendered under, besides COLUMNS: not TERM=dumb, which makes rich
#: ignore COLUMNS (80 columns fixed) wherever colour is forced, as on GitHub Actions
PLAIN = {"TERM": "xterm", "NO_COLOR": "1"}

runner = CliRunner()


def _pages(command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            yield from _pages(sub, (*path, name))


PAGES = list(_pages(typer.main.get_command(app)))


def _page_id(path: tuple[str, ...]) -> str:
    return " ".join(path) or "(root)"


@functools.cache
def render(path: tuple[str, ...], width: int) -> str:
    """``tosa-bench PATH --help`` at ``width`` columns, as plain text."""
    r = runner.invoke(app, [*path, "--help"], env={**PLAIN, "COLUMNS": str(width)}, prog_name=PROG)
    assert r.exit_code == 0, r.output
    return ANSI.sub("", r.stdout)  # CI may force colour (GITHUB_ACTIONS); the layout is the same


def description(text: str) -> list[str]:
    """The prose between the usage line and the first panel, without rich's one-column
    left padding (an indented line keeps its own indentation)."""
    lines = text.splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    return [line[1:].rstrip() for line in lines[start:end]]


def panels(text: str) -> Iterator[list[str]]:
    """The inside of each panel (Options, Arguments, Commands), one string per line."""
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("╭"):
            current = []
        elif line.startswith("╰") and current is not None:
            yield current
            current = None
        elif line.startswith("│") and current is not None:
            current.append(line[2:-2].rstrip())


def text_column(rows: list[str]) -> int:
    """Where a panel's last column (the help text) starts: the most common start of the
    text after the last gap of two or more spaces (table columns are two apart)."""
    starts = []
    for row in rows:
        gaps = list(re.finditer(r" {2,}", row))
        starts.append(gaps[-1].end() if gaps else 0)
    counts = Counter(starts).most_common()
    best = counts[0][1]
    return min(start for start, n in counts if n == best)


def prose_runs(text: str, width: int) -> Iterator[tuple[list[str], int]]:
    """Each run of prose on a page with the columns rich wraps it at: the description
    (``width`` less one column of padding each side), then each panel's help column.
    Within a panel only the help column is kept: a line whose other columns are not
    empty (a new option or command) ends the run."""
    yield description(text), width - 2
    for rows in panels(text):
        x = text_column(rows)
        run: list[str] = []
        for row in rows:
            left, cell = row[:x], row[x:]
            if left.strip():  # a new row of the table (or a wrapped type next to it)
                if run:
                    yield run, width - 4 - x
                run = [cell]
            else:
                run.append(cell)
        if run:
            yield run, width - 4 - x


def cut_short(a: str, b: str, room: int) -> bool:
    """True when line ``b`` continues the sentence of line ``a`` although its first word
    would have fitted on ``a``: a line break typed into the source, not rich's wrapping.
    Deliberate breaks pass: after a sentence or a colon, before a line indented deeper
    than ``a`` (a list under prose), a list item or Typer's ``[default: ...]`` notes.
    Both lines keep their indentation (an item's typed continuation at the item's own
    indentation is caught too)."""
    if not a.strip() or not b.strip() or LIST_ITEM.match(b.lstrip()) or b.lstrip().startswith("["):
        return False
    if _indent(b) > _indent(a) or a.rstrip()[-1] in ".:;!?":
        return False
    return len(a) + 1 + len(b.split()[0]) <= room - SLACK


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def wrapped_to_margin(a: str, b: str) -> bool:
    """True when ``b`` goes on at the margin right after the indented line ``a``: a list
    line too long for the width, which rich wraps without its indentation."""
    return bool(a.strip() and b.strip()) and _indent(a) > 0 and _indent(b) == 0 and not LIST_ITEM.match(b)


def hard_breaks(text: str, width: int) -> list[str]:
    found = []
    for lines, room in prose_runs(text, width):
        for a, b in zip(lines, lines[1:]):
            if cut_short(a, b, room):
                found.append(f"cut short: {a.strip()!r} / {b.strip()!r}")
            elif wrapped_to_margin(a, b):
                found.append(f"list line wrapped to the margin: {a.strip()!r} / {b.strip()!r}")
    return found


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_no_sentence_is_cut_short(path, width):
    text = render(path, width)
    assert not hard_breaks(text, width), f"{_page_id(path)} at {width} columns:\n" + "\n".join(hard_breaks(text, width))


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_flags_read_as_flags(path):
    for width in WIDTHS:
        text = render(path, width)
        assert "<bool>" not in text, f"{_page_id(path)}: {[line for line in text.splitlines() if '<bool>' in line]}"
    # a flag is shown by its names alone, and the help option is a flag like any other
    assert re.search(r"^│ +--help +Show this message", render(path, 120), re.M), render(path, 120)


def example_of(text: str) -> str:
    """The description's last paragraph, which must be one ``Example: ...`` line (wrapped
    by rich at most); returns the command line after ``Example:``."""
    lines = description(text)
    while lines and not lines[-1]:
        lines.pop()
    blank = max((i for i, line in enumerate(lines) if not line), default=-1)
    paragraph = lines[blank + 1:]
    assert paragraph and paragraph[0].startswith("Example: "), f"the help does not end with an Example line: {paragraph}"
    return " ".join(line.strip() for line in paragraph).removeprefix("Example: ")


def _parse(argv: list[str]) -> None:
    """Parse ``argv`` (without the program name) like the command line does, down to the
    command it names, without running anything."""
    command = typer.main.get_command(app)
    name, ctx = PROG, None
    while argv and argv[0] in getattr(command, "commands", {}):
        ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        name, command, argv = argv[0], command.commands[argv[0]], argv[1:]
    assert not getattr(command, "commands", None), f"{name}: the example names no command of the group"
    command.make_context(name, list(argv), parent=ctx)


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_help_ends_with_a_working_example(path):
    example = example_of(render(path, 120))
    assert example == example_of(render(path, 80))
    argv = shlex.split(example)
    assert argv[0] == PROG, example
    assert argv[1:1 + len(path)] == list(path), f"{_page_id(path)}: the example runs another command: {example}"
    _parse(argv[1:])


#: names of files in a help text: modules (``natural.py``) and paths in the checkout
MODULE_NAME = re.compile(r"(?<![\w/.-])([\w/-]*\w\.py)\b")
CHECKOUT_PATH = re.compile(r"\b((?:docs|suites|results|tosa_bench|benchmarks|tests)/[\w./-]*\w\.[a-z]+)\b")


def _named_files(text: str) -> set[str]:
    return set(MODULE_NAME.findall(text)) | set(CHECKOUT_PATH.findall(text))


def _exists(name: str) -> bool:
    if "/" in name:
        return (ROOT / name).exists() or (PACKAGE / name).exists()
    return any(PACKAGE.rglob(name))


def test_named_files_exist():
    """A file named by a help text is there to read (the suite schema is included: the
    README sends readers to its docstring)."""
    from tosa_bench.sweep import suite

    texts = {_page_id(p): render(p, 120) for p in PAGES}
    texts["tosa_bench/sweep/suite.py (schema)"] = suite.__doc__ or ""
    missing = {where: sorted(n for n in _named_files(text) if not _exists(n)) for where, text in texts.items()}
    missing = {where: names for where, names in missing.items() if names}
    assert not missing, missing
    assert _named_files("see natural.py and docs/gate.md") == {"natural.py", "docs/gate.md"}  # the pattern finds both kinds


def test_in_process_help_is_what_a_terminal_shows():
    """The in-process rendering above is the real one: ``python -m tosa_bench`` with
    COLUMNS=80 prints the same page."""
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "FORCE_COLOR", "PY_COLORS", "TERMINAL_WIDTH")}
    env.update(PLAIN, COLUMNS="80", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    shown = subprocess.run([sys.executable, "-m", "tosa_bench", "sweep", "--help"], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    r = runner.invoke(app, ["sweep", "--help"], env={**PLAIN, "COLUMNS": "80"}, prog_name="python -m tosa_bench")
    assert ANSI.sub("", r.stdout) == shown


def test_the_check_sees_a_typed_line_break():
    """The detector itself: a break typed mid-sentence is found, rich's own wrapping and
    deliberate breaks are not."""
    assert cut_short("and whether the change is beyond", "the tolerance and outside the noise", 78)
    assert not cut_short("and whether the change is beyond the tolerance and outside the noise (95%", "intervals)", 78)
    assert not cut_short("What --keep K means per variant:", "dense: ignores keep", 78)
    assert not cut_short("a list follows", "  dense: ignores keep", 78)
    assert cut_short("  tosa: K of the tokens run each block", "  the others bypass it.", 78)
    assert not cut_short("  tosa: K of the tokens run each block", "    the others bypass it.", 78)  # hanging indent
    assert wrapped_to_margin("  tosa: K of the patch tokens run each selected block (--placement); the", "others bypass it.")
    assert not cut_short("With --launcher: machines", "[default: 1]", 40)
