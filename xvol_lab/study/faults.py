"""Fault injection for the engine's tests: with ``XVOL_FAULT=<point>[:<SIGNAL>]`` in its
environment, a process that reaches `fault_point(<point>)` sends itself SIGNAL (default KILL),
so that a test can interrupt a worker exactly at one of its kill windows. Unset, it does nothing.

Points of the study worker: ``after_ask`` (a trial was asked for, before its first heartbeat),
``after_void`` (an over-budget trial was voided) and ``in_tell`` (the trial's result is read,
inside the tell).

With ``XVOL_FAULT_BATCH_S=<seconds>`` a trial process pauses that long after each training batch
(`batch_pause`), so that a test against a real scheduler can stop a tiny trial mid-epoch whatever
the machine's speed. Results are unchanged.
"""

from __future__ import annotations

import os
import signal
import time

FAULT_ENV = "XVOL_FAULT"
BATCH_PAUSE_ENV = "XVOL_FAULT_BATCH_S"


def fault_point(name: str) -> None:
    """Send this process the configured signal if `name` is the configured point."""
    point, _, sig = os.environ.get(FAULT_ENV, "").partition(":")
    if point == name:
        os.kill(os.getpid(), signal.Signals[f"SIG{sig or 'KILL'}"])


def batch_pause() -> None:
    """Sleep ``$XVOL_FAULT_BATCH_S`` seconds (a number; nothing when unset or not a number)."""
    try:
        seconds = float(os.environ.get(BATCH_PAUSE_ENV, "0"))
    except ValueError:
        return
    if seconds > 0:
        time.sleep(seconds)
