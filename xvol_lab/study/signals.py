"""Stop signals of the study process: SIGTERM (kill, scancel), SIGUSR1 (SLURM's warning before
preemption, ``--signal=B:USR1@120``) and SIGINT (Ctrl-C) stop the worker like Ctrl-C: a
`KeyboardInterrupt` that hands the running trial back (`Worker` fails it and queues it again).

Inside a `deferred()` section (the locked ask of a trial, the tell of a finished one) a signal
is held and raised when the section ends, so that a finished result is never lost half-told.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
_depth = 0
_pending: int | None = None


def _stop(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _depth:
        _pending = signum
        return
    raise KeyboardInterrupt


def install() -> Callable[[], None]:
    """Handle the stop signals as above (main thread only); returns a function restoring the old handlers."""
    previous: dict[int, Any] = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore


@contextmanager
def deferred() -> Iterator[None]:
    """Hold stop signals until the end of the block, then raise `KeyboardInterrupt` for one that came."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            _pending = None
            raise KeyboardInterrupt
