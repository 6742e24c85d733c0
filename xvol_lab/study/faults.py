"""Fault injection for the engine's tests: with ``XVOL_FAULT=<point>[:<SIGNAL>]`` in its
environment, a process that reaches `fault_point(<point>)` sends itself SIGNAL (default KILL),
so that a test can interrupt a worker exactly at one of its kill windows. Unset, it does nothing.

Points of the study worker: ``after_ask`` (a trial was asked for, before its first heartbeat),
``after_void`` (an over-budget trial was voided) and ``in_tell`` (the trial's result is read,
inside the tell).
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "XVOL_FAULT"


def fault_point(name: str) -> None:
    """Send this process the configured signal if `name` is the configured point."""
    point, _, sig = os.environ.get(FAULT_ENV, "").partition(":")
    if point == name:
        os.kill(os.getpid(), signal.Signals[f"SIG{sig or 'KILL'}"])
