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
