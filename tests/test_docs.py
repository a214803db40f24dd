"""Docs and comments point only at files and modules that exist (the layout moves; a
docstring naming a file that is gone sends a reader nowhere)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATH_RE = re.compile(r"\b((?:tosa_bench|benchmarks|tests|suites)/[\w/.-]*\w\.(?:py|toml))\b")
MODULE_RE = re.compile(r"\btosa_bench(?:\.[a-z_][a-z0-9_]*)+")


def _texts() -> list[Path]:
    files = [*ROOT.glob("tosa_bench/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/*.py"),
             *ROOT.glob("suites/*.toml"), ROOT / "README.md", ROOT / "results" / "README.md", *ROOT.glob("docs/*.md")]
    return [f for f in files if f.is_file() and f.name != "test_docs.py"]


def _resolves(dotted: str) -> bool:
    """True if ``dotted`` is a module, or a name reachable in one (``pkg.mod.func``,
    ``pkg.mod.Class.method``; lazily exported names count)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        for name in parts[n:]:
            try:
                obj = getattr(obj, name)
            except AttributeError:
                return False
        return True
    return False


def test_named_files_exist():
    missing = []
    for f in _texts():
        for m in PATH_RE.finditer(f.read_text()):
            if not (ROOT / m.group(1)).exists():
                missing.append(f"{f.relative_to(ROOT)}: {m.group(1)}")
    assert not missing, "\n".join(missing)


def test_named_modules_exist():
    missing = sorted({f"{f.relative_to(ROOT)}: {m.group(0)}" for f in _texts()
                      for m in MODULE_RE.finditer(f.read_text()) if not _resolves(m.group(0))})
    assert not missing, "\n".join(missing)


LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
RESULTS_RE = re.compile(r"(?<![\w/:.-])results/([\w.-]+)")
BARE_PY_RE = re.compile(r"(?<![\w/.-])([a-z_][a-z0-9_]*\.py)\b")
#: file names of other projects that our text cites on purpose
EXTERNAL_PY = {"benchmark.py"}  # timm's benchmark script, cited by a docstring


def _markdown() -> list[Path]:
    return [ROOT / "README.md", ROOT / "results" / "README.md", *sorted(ROOT.glob("docs/*.md"))]


def test_relative_links_resolve():
    """Every relative link or image in the README, results/README.md and docs/ points at a
    file or folder that exists (anchors and web links are not checked)."""
    broken = []
    for f in _markdown():
        for m in LINK_RE.finditer(f.read_text()):
            target = m.group(1).split("#", 1)[0]
            if not target or "://" in target or target.startswith("mailto:"):
                continue
            if not (f.parent / target).exists():
                broken.append(f"{f.relative_to(ROOT)}: {m.group(1)}")
    assert not broken, "\n".join(broken)


def test_named_result_sets_exist():
    """A `results/NAME` the README, results/README.md or docs point at is a folder or file in
    results/ (`results/NAME-*` a pattern that matches one; a deleted set is named without the
    prefix, with the commit where it lived; an upper-case NAME is a placeholder)."""
    missing = []
    for f in _markdown():
        text = f.read_text()
        for m in RESULTS_RE.finditer(text):
            name = m.group(1).rstrip(".")
            if name.isupper() or name == "README.md":
                continue
            glob = text[m.end():m.end() + 1] == "*"
            found = any((ROOT / "results").glob(name + "*")) if glob else (ROOT / "results" / name).exists()
            if not found:
                missing.append(f"{f.relative_to(ROOT)}: results/{m.group(1)}")
    assert not missing, "\n".join(missing)


def test_bare_file_names_exist():
    """A bare `name.py` in a docstring, comment or doc names a file of this repository
    (or one of the other projects' files in EXTERNAL_PY). Tests are left out: they name
    made-up files on purpose (tests/test_help.py checks the rendered help the same way)."""
    ours = {p.name for p in ROOT.rglob("*.py") if ".venv" not in p.parts}
    missing = sorted({f"{f.relative_to(ROOT)}: {m.group(1)}" for f in _texts() if f.parent.name != "tests"
                      for m in BARE_PY_RE.finditer(f.read_text()) if m.group(1) not in ours and m.group(1) not in EXTERNAL_PY})
    assert not missing, "\n".join(missing)


def test_readme_is_a_front_page():
    """200 lines or fewer; the two set-up commands within the first 40 lines, the figure
    within the first 60 (issue #31)."""
    lines = (ROOT / "README.md").read_text().split("\n")
    assert len(lines) <= 200 + 1  # a final newline leaves one empty string
    setup = [i for i, line in enumerate(lines) if line.startswith("python3.11 -m venv .venv")]
    figure = [i for i, line in enumerate(lines) if line.startswith("![")]
    assert len(setup) == 2 and max(setup) < 40, setup
    assert figure and figure[0] < 60, figure


def test_results_catalogue_lists_every_set_once():
    """results/README.md has one table row per result set (a row may hold two sets of one
    call), and names no set that is not there."""
    rows = [line for line in (ROOT / "results" / "README.md").read_text().split("\n") if line.startswith("| `")]
    named = [n for line in rows for n in re.findall(r"`([\w.-]+)/", line.split("|")[1])]
    present = sorted(p.name for p in (ROOT / "results").iterdir() if p.is_dir())
    assert sorted(named) == present, (sorted(named), present)
