"""One writer per run directory: an OS lock on ``<run>/.lock``, held while a process writes.

Why an OS lock (``fcntl.flock``) rather than a lock file whose existence is the lock: the
kernel drops a ``flock`` when the process holding it dies, however it dies (SIGKILL, OOM
killer, power loss), so a stale lock needs no guessing from pids and clocks: if the lock
can be taken, nobody holds it. The file also holds a small JSON (``pid``, ``host``,
``started``, UTC) written by the holder, for two things only: naming the holder when a
second writer is refused, and noticing that the previous holder died without letting go
(a clean exit empties the file; a non-empty file found unlocked was left by a process that
is gone, and taking it over is said in one line).

A lock is held until the process exits (or :func:`release` is called): the directory is
not handed to another writer between planning a run and its last table. Locks are
per-process and re-entrant: a process that already holds a directory's lock gets it again
(``flock`` on a second open file description would block against itself).

Limits: ``flock`` is advisory (only tosa-bench honours it) and on network file systems it
is only as good as the file system's lock service (NFS v4 forwards it; some cluster file
systems do not); the holder's JSON is then still there to read.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tosa_bench.errors import OutputPathError, RunStateError

LOCK = ".lock"


@dataclass
class _Held:
    fd: int
    path: Path


#: resolved run directory -> the lock this process holds on it
_HELD: dict[Path, _Held] = {}


def _holder_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _read_info(fd: int) -> dict[str, Any] | None:
    """The JSON in the lock file (None if empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        info = json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def describe(info: dict[str, Any] | None) -> str:
    """'pid 123 on host h since 2026-01-01T00:00:00+00:00' (or 'an unknown process')."""
    if not info:
        return "an unknown process"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('started', '?')}"


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """The recorded holder of ``run_dir``'s lock if another live process holds it, else
    None (also when this process holds it). Reads only (takes a shared lock for an
    instant to test it, never writes)."""
    if held_by_me(run_dir):
        return None
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(fd) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def acquire(run_dir: str | Path, note: Callable[[str], None] | None = None) -> bool:
    """Lock ``run_dir`` (which must exist) for this process until it exits.

    :class:`~tosa_bench.errors.RunStateError` naming the holder if another live process
    holds it; a lock left by a dead process is taken over and ``note`` (default: stderr)
    gets one line saying so. Returns True if the lock was taken now, False if this process
    held it already (then only the first taker should :func:`release` it).
    """
    key = Path(run_dir).resolve()
    if key in _HELD:
        return False
    path = key / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OutputPathError(f"out: {key} is not writable (cannot create its lock file: {err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _read_info(fd)
        os.close(fd)
        raise RunStateError(f"{key} is being written by another tosa-bench process ({describe(info)}); "
                            "wait for it to finish or stop it, then --resume") from None
    except OSError as err:
        os.close(fd)
        raise OutputPathError(f"out: cannot lock {path} ({err.strerror or err})") from None
    stale = _read_info(fd)
    if stale:
        (note or _stderr)(_takeover_note(key, stale))
    try:
        _write_info(fd, _holder_info())
    except OSError as err:  # e.g. a full disk: the run could not be written either
        os.close(fd)
        raise OutputPathError(f"out: cannot write {path} ({err.strerror or err})") from None
    _HELD[key] = _Held(fd, path)
    return True


def _takeover_note(key: Path, stale: dict[str, Any]) -> str:
    """The line said when a lock is found free but its holder never emptied it. On this
    host the kernel's word is final (the holder died); for another host it is only as good
    as the file system's locking across hosts, so the line says that too."""
    if stale.get("host") in (None, socket.gethostname()):
        return f"note: {key} was locked by {describe(stale)}, which is gone; taking the run over"
    return (f"note: {key} was locked by {describe(stale)}; the lock is free now (that process ended, or this file "
            "system does not share locks between hosts); taking the run over")


def _write_info(fd: int, info: dict[str, Any] | None) -> None:
    os.ftruncate(fd, 0)
    if info is not None:
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)


def release(run_dir: str | Path) -> None:
    """Let go of ``run_dir``'s lock if this process holds it: the holder JSON is emptied
    first (an empty file found unlocked means a clean exit), then the lock dropped."""
    held = _HELD.pop(Path(run_dir).resolve(), None)
    if held is None:
        return
    try:
        _write_info(held.fd, None)
    except OSError:
        pass  # the kernel still drops the lock below
    try:
        fcntl.flock(held.fd, fcntl.LOCK_UN)
    finally:
        os.close(held.fd)


def release_all() -> None:
    """Release every lock this process holds (registered with :mod:`atexit`)."""
    for key in list(_HELD):
        release(key)


def held_by_me(run_dir: str | Path) -> bool:
    return Path(run_dir).resolve() in _HELD


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


atexit.register(release_all)
