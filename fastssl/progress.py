"""Progress bars on a terminal only.

On a terminal, tqdm bars; in a log file (stderr not a terminal) no bars: carriage-return frames
make a log unreadable, so the trainer writes one line per epoch instead and each stage logs
its own line.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def bar(iterable=None, *, enabled: bool = True, **kw):
    """A tqdm bar, shown when ``enabled`` and stderr is a terminal."""

    return tqdm(iterable, disable=not (enabled and sys.stderr.isatty()), **kw)


def log(msg: str, who: str = "repro") -> None:
    """One timestamped line of a long command's stages on stdout, e.g. ``[repro 12:00:00] ...``."""
    print(f"[{who} {time.strftime('%H:%M:%S')}] {msg}", flush=True)
