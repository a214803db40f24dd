"""A minimal TOML writer for the resolved suite (``suite.toml`` of a run).

Why not a dependency: the data written is small and simple (tables of scalars, lists,
inline tables and one array of tables), and ``tomllib`` reads it back; keeping the writer
here avoids an install step on machines without network access.

Supported values: str, bool, int, float (``inf``/``nan`` included), lists of supported
values, dicts (written as inline tables inside a table, or as ``[name]`` tables / ``[[name]]``
arrays of tables at the top level). ``None`` values are left out (TOML has no null).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else _string(k)


def _string(s: str) -> str:
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    out = "".join(escapes.get(c, c if ord(c) >= 0x20 and ord(c) != 0x7F else f"\\u{ord(c):04x}") for c in s)
    return f'"{out}"'


def value(v: Any) -> str:
    """One TOML value (inline form)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v if x is not None) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(str(k))} = {value(x)}" for k, x in v.items() if x is not None) + "}"
    raise ValueError(f"cannot write {type(v).__name__} value {v!r} as TOML")


def _body(table: Mapping[str, Any]) -> list[str]:
    return [f"{_key(str(k))} = {value(v)}" for k, v in table.items() if v is not None]


def dumps(doc: Mapping[str, Any], header: str = "") -> str:
    """TOML text of ``doc``: top-level scalars first, then ``[table]`` per dict value, then
    ``[[name]]`` per list of dicts. ``header`` lines are written as ``#`` comments."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()]
    scalars = {k: v for k, v in doc.items() if not isinstance(v, Mapping) and not _is_table_array(v)}
    lines += _body(scalars)
    for k, v in doc.items():
        if isinstance(v, Mapping):
            lines += ["", f"[{_key(k)}]", *_body(v)]
    for k, v in doc.items():
        if _is_table_array(v):
            for item in v:
                lines += ["", f"[[{_key(k)}]]", *_body(item)]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)
