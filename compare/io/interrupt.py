"""Interrupted runs: SIGINT and SIGTERM end a run cleanly, never half-way through a write.

``handled()`` installs one handler for both signals (main thread only; restored on
exit, nested uses share it). The handler raises ``Interrupted``, a KeyboardInterrupt
that knows its signal, so code that already catches KeyboardInterrupt keeps working.
Inside ``deferred()`` (the runner wraps each chunk's comparison and CSV write in
it) the signal is held and raised on leaving the block, so a CSV never ends in a
half-written chunk.

The runner answers an interrupt by writing the finished steps it holds and raising
``Interrupted`` with ``report`` set to the rows of every finished step; the CLI then
prints the summary of what ran and exits ``128 + signal`` (130 for SIGINT, 143 for
SIGTERM).
"""
import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal. ``signum``: the signal; ``report``: the rows of every
    finished step (a DataFrame, set by the runner), or None."""

    def __init__(self, signum=signal.SIGINT, report=None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.report = signum, report

    @property
    def exit_code(self):
        return 128 + int(self.signum)

    @property
    def signame(self):
        return signal.Signals(self.signum).name


_state = {"installed": 0, "deferred": 0, "pending": None}


def _handler(signum, frame):
    if _state["deferred"]:
        _state["pending"] = signum
        return
    raise Interrupted(signum)


@contextmanager
def handled():
    """SIGINT and SIGTERM raise Interrupted while inside (a no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = None
    if _state["installed"] == 0:
        old = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state["installed"] += 1
    try:
        yield
    finally:
        _state["installed"] -= 1
        if old is not None:
            for s, h in old.items():
                signal.signal(s, h)


@contextmanager
def deferred():
    """Hold a signal that arrives inside; raise it as Interrupted on leaving."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1
        if _state["deferred"] == 0 and _state["pending"] is not None:
            signum, _state["pending"] = _state["pending"], None
            raise Interrupted(signum)
