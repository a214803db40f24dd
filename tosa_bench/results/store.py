"""The results store: one directory per run.

Layout of ``runs/<run-id>/`` (or ``--out DIR``)::

    records.jsonl   one JSON object per measured point, in the order measured; each
                    line is appended, flushed and fsync'd as soon as its point finishes
    env.json        environment_record() of the machine at the start of the run
    env-resume-<UTC>.json   the same, for each later --resume session
    suite.toml      the resolved suite: settings, the whole grid as [[points]], [run]
    table.md, table.csv     the comparison tables (rewritten at the end of a session;
                    ``tosa-bench report`` rebuilds them from records.jsonl alone)
    .lock           held (flock) by the process writing the run, with its pid, host and
                    start as JSON (:mod:`tosa_bench.sweep.lock`); empty when none is

Crash safety: a record is written with a single ``write`` of one line, then flushed and
fsync'd, so a run killed at any moment (Ctrl-C, SIGKILL, power loss) loses at most the
point in flight. The only damage possible is a torn last line (no final newline / not
valid JSON): readers skip it, and :meth:`RunStore.open_for_append` cuts it off before a
resumed run appends, so it can never glue onto a new record. Other files are replaced
atomically (write to a temporary file, fsync, rename).

When several records share a config hash, the last one in the file is the point's
result (:func:`latest_by_hash`; every reader goes through it, :func:`tosa_bench.results.load_run`):
a point re-run by ``--resume`` after an ``error``/``oom``, and an ok point whose accuracy
a resume added (``--imagenet``/``--nyu`` on a run without them: a copy of its record with
the accuracy filled in is appended; the first record stays, nothing is rewritten in place).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tosa_bench.errors import OutputPathError, RunStateError

RECORDS = "records.jsonl"
ENV = "env.json"
SUITE = "suite.toml"


@dataclass
class LoadedRecords:
    """Records read from a store: ``records`` (valid, in file order), ``torn_tail`` (the
    last line was incomplete and skipped), ``bad_lines`` (1-based numbers of other lines
    that were not JSON objects, skipped)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    torn_tail: bool = False
    bad_lines: list[int] = field(default_factory=list)


def _clean(v: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None (strict JSON has no NaN), tuples -> lists."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def encode_record(record: dict[str, Any]) -> bytes:
    """One JSONL line (UTF-8, newline-terminated, strict JSON)."""
    return (json.dumps(_clean(record), default=str, allow_nan=False, separators=(",", ":")) + "\n").encode()


def read_records(path: str | Path) -> LoadedRecords:
    """Parse a ``records.jsonl`` tolerantly (see module docstring); a missing file is empty."""
    p = Path(path)
    out = LoadedRecords()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return out
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline
    for i, line in enumerate(complete, 1):
        if not line.strip():
            continue
        obj = _parse(line)
        if obj is None:
            out.bad_lines.append(i)
        else:
            out.records.append(obj)
    if tail.strip():
        obj = _parse(tail)
        if obj is None:
            out.torn_tail = True
        else:  # complete JSON whose newline was lost: keep it
            out.records.append(obj)
    return out


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) and "config_hash" in obj else None


def latest_by_hash(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """config hash -> its last record (file order), insertion-ordered by first appearance."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        out[r["config_hash"]] = r
    return out


def write_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file in the same folder, fsync, rename)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunStore:
    """A run directory (see module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS

    @classmethod
    def create(cls, path: str | Path) -> "RunStore":
        """Make a new run directory; :class:`~tosa_bench.errors.OutputPathError` if it cannot
        be written or already holds records (continue those with ``--resume``)."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise OutputPathError(f"out: {p} exists and is not a directory")
        if (p / RECORDS).exists():
            raise OutputPathError(f"out: {p} already holds {RECORDS}; continue it with --resume {p} or choose another --out")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputPathError(f"out: cannot create {p} ({err.strerror or err})") from None
        store = cls(p)
        store.check_writable()
        return store

    @classmethod
    def existing(cls, path: str | Path) -> "RunStore":
        """An existing run directory (for --resume, report, merge);
        :class:`~tosa_bench.errors.RunStateError` otherwise."""
        p = Path(path)
        if not p.is_dir():
            raise RunStateError(f"run directory not found: {p}")
        if not (p / RECORDS).is_file() and not (p / SUITE).is_file():
            raise RunStateError(f"{p}: not a run directory (no {RECORDS} or {SUITE})")
        return cls(p)

    def check_writable(self) -> None:
        """Write and remove a probe file; :class:`~tosa_bench.errors.OutputPathError` naming
        the folder if that fails."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=".probe.", dir=self.path)
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            raise OutputPathError(f"out: {self.path} is not writable ({err.strerror or err})") from None

    def load(self) -> LoadedRecords:
        return read_records(self.records_path)

    def latest(self) -> dict[str, dict[str, Any]]:
        return latest_by_hash(self.load().records)

    def ok_hashes(self) -> set[str]:
        """Config hashes whose latest record has status ``ok``."""
        return {h for h, r in self.latest().items() if r.get("status") == "ok"}

    def open_for_append(self) -> None:
        """Cut a torn last line off ``records.jsonl`` (if any) so appends start clean."""
        p = self.records_path
        if not p.exists():
            p.touch()
            _fsync_dir(self.path)
            return
        with open(p, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                tail = data[cut:]
                if _parse(tail) is not None:  # a whole record that only lost its newline
                    fh.seek(0, os.SEEK_END)
                    fh.write(b"\n")
                else:
                    fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one line; flushed and fsync'd before returning."""
        line = encode_record(record)
        with open(self.records_path, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def write_text(self, name: str, text: str) -> None:
        write_atomic(self.path / name, text)

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(_clean(obj), indent=1, default=str) + "\n")

    def read_json(self, name: str) -> Any | None:
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
