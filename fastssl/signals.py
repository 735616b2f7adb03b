"""Stopping on Ctrl-C (SIGINT) and SIGTERM, once.

The first signal asks the running command to stop: a trainer takes it between two steps and
saves a checkpoint of the last completed one; anything else stops where it is. Every signal
after the first, while the command winds down, is ignored, so the exit status stays 130 and a
checkpoint being written is never cut short.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

_state = {"stopping": False}


def stopping() -> bool:
    """Whether a stop was asked for since :func:`reset`."""
    return _state["stopping"]


def reset() -> None:
    _state["stopping"] = False


def _first() -> bool:
    first = not _state["stopping"]
    _state["stopping"] = True
    return first


def check_stop() -> None:
    """KeyboardInterrupt if a stop was asked for: called before an output is committed, so
    that a Ctrl-C swallowed where it landed (e.g. inside a compiled callback) still stops."""
    if _state["stopping"]:
        raise KeyboardInterrupt


def raise_once(signum, frame) -> None:
    """A SIGINT / SIGTERM handler: KeyboardInterrupt for the first signal, nothing for later ones."""
    if _first():
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred(message: str):
    """For the block, SIGINT and SIGTERM only set a flag (the yielded dict's ``"n"``, a count)
    that the caller reads at a safe point; the first prints ``message``. Only the main thread
    can take signals: elsewhere this yields None and signals keep their handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    flag = {"n": 0}

    def handler(signum, frame):
        flag["n"] += 1
        if _first():
            print(f"\nfastssl: {message}", file=sys.stderr, flush=True)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)
