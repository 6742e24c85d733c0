"""How workers share one study in its storage: recover, claim, void, hand back, tell.

Every decision that changes a trial's state goes through `SharedStudy`, under the study lock where
two workers could race (`xvol_lab.study.lock`):

- recover: fail and queue again the trials whose worker is gone (heartbeat older than the grace
  period, or asked for and never started);
- claim: ask Optuna for a trial, record its first heartbeat, mark it started and take its slot
  (`xvol_lab.study.ledger.slots`), or void it when the slot is past the budget;
- void: fail a trial over the budget at once, not counted;
- hand back: fail an interrupted trial and queue it again (its retry continues its folder); a
  planned stop (signal, preemption, time limit) always, a crash unless crashes used up
  budget.max_retries;
- tell: record how a trial ended (`xvol_lab.study.outcome.Outcome`), unless another worker failed
  it meanwhile.

A `Heartbeat` keeps a claimed trial alive while the worker trains it.
"""

from __future__ import annotations

import datetime
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from xvol_lab.study.config import StudyConfig
from xvol_lab.study.faults import fault_point
from xvol_lab.study.ledger import PLANNED, STARTED, VOID, RetryCrashes, crashes, is_fresh, slots
from xvol_lab.study.lock import StudyLock
from xvol_lab.study.outcome import Outcome
from xvol_lab.study.storage import grace_seconds, join_study, sqlite_file

log = logging.getLogger(__name__)


class Heartbeat:
    """Records the heartbeat of one trial every `interval` seconds while in the `with` block."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: int) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="xvol-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as err:  # a storage hiccup: the next beat may get through
                log.warning("heartbeat of trial id %d not recorded: %s", self.trial_id, err)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Claim:
    """A trial this worker asked for and may run: its storage id and its slot in the budget."""

    trial: optuna.Trial
    trial_id: int
    slot: int


class SharedStudy:
    """Study `name` in `storage`, as one of the workers that share it (see the module docstring)."""

    def __init__(self, storage: RDBStorage, url: str, name: str, config: StudyConfig,
                 sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner) -> None:
        self.storage, self.config = storage, config
        self.lock = StudyLock(sqlite_file(url))
        self.study = join_study(storage, name, config, sampler=sampler, pruner=pruner)
        self.study_id = storage.get_study_id_from_name(name)

    def trial_id(self, number: int) -> int:
        """The storage's id of trial `number` (for heartbeats and system attrs)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        """Every trial of the study, as stored now."""
        return self.study.get_trials(deepcopy=False)

    def heartbeat(self, claim: Claim) -> Heartbeat:
        """The heartbeat that keeps `claim` alive while its trial trains."""
        return Heartbeat(self.storage, claim.trial_id, self.config.heartbeat)

    def recover(self) -> None:
        """Fail and queue again the trials whose worker is gone: heartbeat older than the grace
        period (Optuna), or asked for and never started (no heartbeat: killed right after the ask)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace_seconds(self.config.heartbeat))
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            started = t.system_attrs.get(STARTED) == t.number  # a retry inherits its original's mark
            if not started and t.datetime_start is not None and t.datetime_start < cutoff:
                log.warning("trial %d was asked for by a worker that stopped before its first heartbeat",
                            t.number)
                self.hand_back(t.number)

    def claim(self, n: int) -> Claim | None:
        """Ask for a trial, record its first heartbeat and mark it started, then take its slot; None
        when the slot is past the budget of `n` trials (the trial is voided). Under the lock."""
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize"
            warnings.simplefilter("ignore", UserWarning)
            trial = self.study.ask()
        fault_point("after_ask")
        trial_id = self.trial_id(trial.number)
        self.storage.record_heartbeat(trial_id)
        self.storage.set_trial_system_attr(trial_id, STARTED, trial.number)
        slot = slots(self.trials()).get(trial.number)
        if slot is None or slot >= n:
            self.void(trial, trial_id, n)
            fault_point("after_void")
            return None
        return Claim(trial, trial_id, slot)

    def void(self, trial: optuna.Trial, trial_id: int, n: int) -> None:
        """A trial over the budget (another worker took the last slot, or the retry of such a
        trial): failed at once and not counted."""
        self.storage.set_trial_system_attr(trial_id, VOID, True)
        trial.set_user_attr("fail_reason", f"not run: the budget of {n} trials was taken by other workers")
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    def hand_back(self, number: int, reason: str = "interrupted", *, planned: bool = False) -> None:
        """Fail trial `number` and queue it again (the retry continues its folder), unless another
        worker failed it first. A `planned` stop (a stop signal: preemption, time limit, requeue,
        scancel, Ctrl-C) is always retried and never counts against budget.max_retries; a crash is
        retried unless the trial's earlier crashes used them up (then it stays failed with `reason`
        and counts). Under the lock; the state change is atomic in the storage."""
        trial_id = self.trial_id(number)
        retries = self.config.budget.max_retries
        frozen = self.storage.get_trial(trial_id)
        if frozen.state.is_finished():
            return
        if planned:
            stops = [*frozen.system_attrs.get(PLANNED, []), number]
            self.storage.set_trial_system_attr(trial_id, PLANNED, stops)
            log.info("trial %d: planned stop (%s); queued again, not counted against budget.max_retries",
                     number, reason)
        elif RetryCrashes(retries).spent(frozen):
            self.storage.set_trial_user_attr(trial_id, "fail_reason",
                                             f"{reason}; not retried (budget.max_retries is {retries})")
            log.warning("trial %d: crash (%s); not retried: crash %d of budget.max_retries %d", number,
                        reason, crashes(frozen) + 1, retries)
        else:
            log.warning("trial %d: crash (%s); queued again: crash %d of budget.max_retries %d", number, reason,
                        crashes(frozen) + 1, retries)
        try:
            if not self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # failed (and queued again) by another worker
        RetryCrashes(retries)(self.study, self.storage.get_trial(trial_id))

    def tell(self, trial: optuna.Trial, outcome: Outcome) -> bool:
        """Tell the study how the trial ended (with its attrs); False when another worker failed it
        meanwhile (heartbeat lost): it is left as it is, and its retry finds this attempt's seeds."""
        fault_point("in_tell")
        try:
            for key, value in outcome.attrs.items():
                trial.set_user_attr(key, value)
            if outcome.state == "complete":
                self.study.tell(trial, outcome.values, skip_if_finished=True)
            elif outcome.state == "pruned":
                trial.set_user_attr("prune_reason", outcome.reason)
                self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                trial.set_user_attr("fail_reason", outcome.reason)
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was declared stale by another worker (heartbeat lost) and queued again; "
                        "its retry keeps this attempt's finished seeds", trial.number)
            return False
        return True

    def inherited_dir(self, number: int) -> Path | None:
        """The folder a retry of trial `number` continues (its original's), None for a new trial."""
        frozen = self.storage.get_trial(self.trial_id(number))
        inherited = frozen.user_attrs.get("trial_dir")
        if not is_fresh(frozen) and inherited and Path(inherited).is_dir():
            return Path(inherited)
        return None
