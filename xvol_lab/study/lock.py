"""The lock a worker holds while it decides in the shared storage: recover stale trials, count the
budget, ask for a trial, record its first heartbeat, and take its slot or void it.

Optuna's row locks are no-ops on SQLite (optuna#4002): two processes could both move one trial
WAITING -> RUNNING or RUNNING -> FAIL. For a SQLite storage the workers therefore take an
exclusive `fcntl.flock` on a file beside the database (``study.db.lock``), which serialises those
decisions among all workers on the machine. Server storages (PostgreSQL, MySQL) lock rows in
the database themselves; there the lock is a no-op.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StudyLock:
    """An exclusive lock on ``<db>.lock`` for a SQLite file `db`; no lock when `db` is None."""

    def __init__(self, db: Path | None) -> None:
        self.path = db.with_name(db.name + ".lock") if db is not None else None

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block (blocks until the other workers release it)."""
        if self.path is None:
            yield
            return
        with self.path.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
