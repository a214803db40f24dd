"""Stopping a sweep on Ctrl-C (SIGINT) or SIGTERM (what Slurm, CI runners and ``kill``
send), the same way for both.

Without a handler SIGTERM ends Python at once, without a word, and skips every
``finally`` and ``atexit``. :func:`stop_on_signals` turns both signals into
:class:`Stopped` (a ``KeyboardInterrupt``), raised in the main thread, so the sweep
unwinds as it does on Ctrl-C: the point in flight is dropped, the resume hint is printed,
the lock is released. Exit codes follow the shell's 128 + signal number: 130 for SIGINT,
143 for SIGTERM (:attr:`Stopped.exit_code`).

A record must never be half-written, so :func:`deferred` marks the few lines that append
one: a signal arriving there is held and raised when the block ends, after the record is
whole. (Blocking the signal with ``pthread_sigmask`` would not do: the kernel may deliver
it to another thread, e.g. one of torch's, and Python then runs the handler in the main
thread at the next bytecode anyway.)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The sweep was asked to stop by signal ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM), as shells report it."""
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _State:
    depth = 0  # nesting of deferred() blocks
    held: int | None = None  # a signal that arrived inside one


def _handler(signum: int, frame: FrameType | None) -> None:
    if _State.depth:
        _State.held = signum
        return
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals(extra: tuple[int, ...] = ()) -> Iterator[None]:
    """Raise :class:`Stopped` on SIGINT and SIGTERM (and the ``extra`` signals, e.g.
    Slurm's USR2 in a launched shard) while the block runs (main thread only; elsewhere
    signals cannot be handled and the block runs unchanged). The previous handlers come
    back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (*SIGNALS, *extra)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (see module docstring); then raise
    :class:`Stopped` for a signal that came in meanwhile."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0 and _State.held is not None:
            signum, _State.held = _State.held, None
            raise Stopped(signum)
