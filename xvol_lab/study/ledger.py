"""Bookkeeping of a shared study: which trials count toward the budget, and each trial's slot.

Rules (the same in every worker, computed from the storage alone):

- A *fresh* trial is one the study created (not a retry). Fresh trials take slots 0, 1, 2, ...
  in trial-number order, skipping void ones. Trial numbers are assigned under a lock in the
  storage, so two workers agree on every slot. Slot k < len(plan) runs plan point k.
- A trial whose worker stopped (heartbeat lost, Ctrl-C, kill) is failed and *retried*: Optuna's
  `RetryHeartbeatStaleTrialCallback` queues a copy (same params) whose system attrs name the
  original; the copy inherits the original's slot, and the interrupted trial is not counted.
- A fresh trial created past the budget (two workers asked at the same moment for the last
  slot) is failed at once as *void* (system attr ``xvol:void``) and not counted.
- The budget counts finished trials (COMPLETE, PRUNED, FAIL) that are neither interrupted nor
  void: the study ends with exactly n_trials of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

VOID = "xvol:void"
RETRY_OF = "failed_trial"  # set by optuna.storages.RetryHeartbeatStaleTrialCallback
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def retried(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the trials that were interrupted and queued again."""
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))
    return out


def is_fresh(trial: FrozenTrial) -> bool:
    """Created by a worker for a new slot (not a retry)."""
    return RETRY_OF not in trial.system_attrs


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
        elif t.system_attrs[RETRY_OF] in out:
            out[t.number] = out[t.system_attrs[RETRY_OF]]
    return out


@dataclass(frozen=True)
class Tally:
    """Counts of a study's trials under the rules above."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    interrupted: int = 0
    void: int = 0

    @property
    def finished(self) -> int:
        """Trials that count toward the budget."""
        return self.complete + self.pruned + self.failed


def tally(trials: Iterable[FrozenTrial]) -> Tally:
    """Count `trials` (all trials of one study)."""
    trials = list(trials)
    again = retried(trials)
    counts = dict.fromkeys(("complete", "pruned", "failed", "running", "waiting", "interrupted", "void"), 0)
    key = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
           TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for t in trials:
        if t.system_attrs.get(VOID):
            counts["void"] += 1
        elif t.number in again:
            counts["interrupted"] += 1
        else:
            counts[key[t.state]] += 1
    return Tally(**counts)


def counted(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The finished trials that count toward the budget, by number."""
    trials = list(trials)
    again = retried(trials)
    return sorted((t for t in trials if t.state in FINISHED and t.number not in again
                   and not t.system_attrs.get(VOID)), key=lambda t: t.number)
