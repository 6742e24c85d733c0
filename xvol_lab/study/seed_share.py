"""Seed sharing: a worker with no trial left to claim trains unstarted seeds of a trial that another
worker on this machine runs, so that a study's last configurations do not train their seeds one
after another while the other workers idle.

- A trial whose seeds all run whatever their values (fixed seeds, no pruner reports: the
  ablations) is *shared*: while its worker (the owner) runs it, trial_<n>/share.json holds this
  machine's name and each seed's `TrialRequest`. Trials with a sequential seed design or a pruner
  are not shared: which of their seeds run depends, in order, on the values of the earlier ones.
- Every seed run, by whichever worker, holds an exclusive `fcntl.flock` on its seed_<s>/claim,
  passed on to its trial process: the kernel releases it when both have ended, however they end
  (SIGKILL included). The file is never removed: a new file of that name would be a second lock.
- The owner runs its seeds in order, skipping those a helper holds; helpers take seeds from the
  end. The owner then waits for the helped seeds; one that ends without a result (its helper was
  stopped or died) is claimed and continued by the owner from its last checkpoint.
- Only workers on the owner's machine help (flock is not a lock across NFS clients).
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from xvol_lab.schema import from_dict, to_dict
from xvol_lab.study.files import read_json, write_json
from xvol_lab.study.outcome import TrialRequest

SHARE = "share.json"  # in a trial folder: the seeds other workers on this machine may train
CLAIM = "claim"  # in a seed's run folder: flocked by whoever trains the seed


@contextmanager
def claimed(run_dir: Path) -> Iterator[int | None]:
    """Try to claim the seed of `run_dir` (created if missing): yields the claim's file descriptor
    (pass it to the trial process: the claim then lasts as long as that process), or None when a
    live process holds it. The claim is released when the block ends and no process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / CLAIM, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


@contextmanager
def shared(trial_dir: Path, requests: Mapping[str, TrialRequest]) -> Iterator[None]:
    """Offer the seeds `requests` (run folder name -> request) of the trial in `trial_dir` to the
    workers on this machine for the block; nothing is offered when `requests` is empty."""
    path = trial_dir / SHARE
    if requests:
        trial_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, {"host": socket.gethostname(),
                          "seeds": {name: to_dict(request) for name, request in requests.items()}})
    try:
        yield
    finally:
        if requests:
            path.unlink(missing_ok=True)


def offered(folder: Path) -> Iterator[tuple[Path, TrialRequest]]:
    """(run folder, request) of every seed that the running trials of a study folder offer to this
    machine's workers, the last seeds of each trial first."""
    host = socket.gethostname()
    for path in sorted(folder.glob(f"trial_*/{SHARE}")):
        data = read_json(path)  # None once its owner has withdrawn it
        if data is None or data.get("host") != host or not isinstance(data.get("seeds"), dict):
            continue
        for name, request in reversed(list(data["seeds"].items())):
            yield path.parent / name, from_dict(TrialRequest, request)
