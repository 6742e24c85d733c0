"""Bookkeeping of a shared study: which trials count toward the budget, and each trial's slot.

Rules (the same in every worker, computed from the storage alone):

- A *fresh* trial is one the study created (not a retry). Fresh trials take slots 0, 1, 2, ...
  in trial-number order, skipping void ones. Trial numbers are assigned under a lock in the
  storage, so two workers agree on every slot. Slot k < len(plan) runs plan point k.
- A trial whose worker stopped (heartbeat lost, Ctrl-C, kill, preemption) is failed and
  *retried*: Optuna's `RetryHeartbeatStaleTrialCallback` queues a copy (same params, user attrs
  and intermediate values) that names the original (`retry_of`, `retry_history`); the copy
  inherits the original's slot and folder, and the interrupted trial is not counted. Only crashes
  (a worker lost: heartbeat gone, killed before its first heartbeat) count against
  budget.max_retries: after that many an interrupted trial stays failed and counts. A *planned*
  stop (SIGTERM, USR1 or Ctrl-C to the worker or its trial: preemption, time limit, requeue,
  scancel) is recorded in system attr ``xvol:planned_stops`` and always retried (`RetryCrashes`).
- A trial whose slot is past the budget (without the SQLite lock two workers may ask at the same
  moment for the last slot; or the retry of such a trial) is failed at once as *void* (system
  attr ``xvol:void``) and not counted.
- The budget counts finished trials (COMPLETE, PRUNED, FAIL) that are neither interrupted nor
  void: the study ends with exactly n_trials of them.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

VOID = "xvol:void"
STARTED = "xvol:started"  # = the trial's number once its worker recorded its first heartbeat
PLANNED = "xvol:planned_stops"  # numbers of the attempts stopped on purpose (a retry inherits the list)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def retry_callback(max_retries: int | None) -> RetryHeartbeatStaleTrialCallback:
    """Queues a copy of an interrupted trial (params, user attrs and intermediate values; the copy
    continues the interrupted trial's folder) unless the trial was retried `max_retries` times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retries, inherit_intermediate_values=True)


def crashes(trial: FrozenTrial) -> int:
    """How many of the attempts before `trial` (those it retries) were lost by a crash, not stopped
    on purpose (`PLANNED`)."""
    planned = set(trial.system_attrs.get(PLANNED, []))
    return sum(1 for number in retry_history(trial) if number not in planned)


def planned_stop(trial: FrozenTrial) -> bool:
    """`trial` itself was stopped on purpose (its worker recorded the stop in `PLANNED`)."""
    return trial.number in trial.system_attrs.get(PLANNED, [])


class RetryCrashes:
    """Failed-trial callback (storage's stale-heartbeat callback, and `SharedStudy.hand_back`):
    queue a copy of the interrupted trial (`retry_callback`) unless it crashed and the attempts
    before it crashed `max_retries` times already; a planned stop is always retried."""

    def __init__(self, max_retries: int | None) -> None:
        self.max_retries = max_retries

    def spent(self, trial: FrozenTrial) -> bool:
        """No retry for `trial`: it crashed and its crash retries are used up."""
        return (not planned_stop(trial) and self.max_retries is not None
                and crashes(trial) >= self.max_retries)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self.spent(trial):
            retry_callback(None)(study, trial)


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the original trial that `trial` retries (None: not a retry)."""
    with warnings.catch_warnings():  # experimental since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the trials `trial` retries, the original first ([] for a fresh trial)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def retried(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the trials that were interrupted and queued again."""
    out: set[int] = set()
    for t in trials:
        out.update(retry_history(t))
    return out


def is_fresh(trial: FrozenTrial) -> bool:
    """Created by a worker for a new slot (not a retry)."""
    return retry_of(trial) is None


def slots(trials: Iterable[FrozenTrial]) -> dict[int, int]:
    """trial number -> slot, for every non-void trial."""
    out: dict[int, int] = {}
    fresh = 0
    for t in sorted(trials, key=lambda t: t.number):
        if t.system_attrs.get(VOID):
            continue
        if is_fresh(t):
            out[t.number] = fresh
            fresh += 1
        elif retry_of(t) in out:
            out[t.number] = out[retry_of(t)]
    return out


@dataclass(frozen=True)
class Tally:
    """Counts of a study's trials under the rules above."""

    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    interrupted: int
    void: int

    @property
    def finished(self) -> int:
        """Trials that count toward the budget."""
        return self.complete + self.pruned + self.failed


def tally(trials: Iterable[FrozenTrial]) -> Tally:
    """Count `trials` (all trials of one study)."""
    trials = list(trials)
    again = retried(trials)
    counts: Counter[str] = Counter()
    key = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
           TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for t in trials:
        if t.system_attrs.get(VOID):
            counts["void"] += 1
        elif t.number in again:
            counts["interrupted"] += 1
        else:
            counts[key[t.state]] += 1
    return Tally(**{f.name: counts[f.name] for f in fields(Tally)})


def counted(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The finished trials that count toward the budget, by number."""
    trials = list(trials)
    again = retried(trials)
    return sorted((t for t in trials if t.state in FINISHED and t.number not in again
                   and not t.system_attrs.get(VOID)), key=lambda t: t.number)
