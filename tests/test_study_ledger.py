"""Bookkeeping of a shared study: slots, retries, void trials, trial outcomes, reports for pruning."""

from __future__ import annotations

import datetime
import functools
import json
import logging
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from xvol_lab.errors import ConfigError
from xvol_lab.schema import with_overrides
from xvol_lab.study.config import PrunerConfig, load_study_config
from xvol_lab.study.launch import STORAGE_ENV
from xvol_lab.study.ledger import PLANNED, VOID, RetryCrashes, counted, crashes, slots, tally
from xvol_lab.study.outcome import read_outcome
from xvol_lab.study.protocol import SharedStudy
from xvol_lab.study.samplers import make_pruner
from xvol_lab.study.storage import busy_timeout, grace_seconds, join_study, open_storage
from xvol_lab.study.trial import StudyTrial, exit_code

optuna.logging.set_verbosity(optuna.logging.WARNING)
NOW = datetime.datetime(2026, 1, 1)


def trial(number: int, state: TrialState, **system_attrs) -> FrozenTrial:
    done = state.is_finished()
    return FrozenTrial(number=number, state=state, value=1.0 if state == TrialState.COMPLETE else None,
                       datetime_start=NOW, datetime_complete=NOW if done else None, params={},
                       distributions={}, user_attrs={}, system_attrs=system_attrs, intermediate_values={},
                       trial_id=number)


def retry(number: int, of: int, history: list[int]) -> FrozenTrial:
    return trial(number, TrialState.COMPLETE, failed_trial=of, retry_history=history)


def test_retries_keep_the_slot_and_interrupted_trials_do_not_count():
    trials = [trial(0, TrialState.COMPLETE), trial(1, TrialState.FAIL), trial(2, TrialState.PRUNED),
              trial(3, TrialState.FAIL), retry(4, 1, [1]), trial(5, TrialState.RUNNING)]
    assert slots(trials) == {0: 0, 1: 1, 2: 2, 3: 3, 4: 1, 5: 4}
    t = tally(trials)
    assert (t.complete, t.pruned, t.failed, t.running, t.interrupted, t.finished) == (2, 1, 1, 1, 1, 4)
    assert [u.number for u in counted(trials)] == [0, 2, 3, 4]


def test_retry_of_a_retry_and_void_trials():
    trials = [trial(0, TrialState.FAIL), trial(1, TrialState.FAIL, **{VOID: True}),
              trial(2, TrialState.COMPLETE),
              trial(3, TrialState.FAIL, failed_trial=0, retry_history=[0]), retry(4, 0, [0, 3]),
              trial(5, TrialState.WAITING)]
    assert slots(trials) == {0: 0, 2: 1, 3: 0, 4: 0, 5: 2}  # the void trial takes no slot
    t = tally(trials)
    assert (t.void, t.interrupted, t.complete, t.waiting, t.finished) == (1, 2, 2, 1, 2)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::optuna.exceptions.ExperimentalWarning")
def test_stale_trial_is_failed_and_queued_again_with_its_params(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, heartbeat=1)
    study = optuna.create_study(study_name="s", storage=storage)
    first = study.ask()
    first.suggest_categorical("stage3.op", ["conv", "pssa"])
    first.report(0.5, 1)
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("s"), first.number))
    # the worker of `first` is gone; after the grace period another worker looks
    time.sleep(grace_seconds(1) + 1.5)  # SQLite timestamps have whole seconds
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    assert [u.state for u in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params
    assert trials[1].intermediate_values == {1: 0.5}  # the retry continues where its original stopped
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[1]) == 0
    assert slots(trials) == {0: 0, 1: 0}
    assert tally(trials).interrupted == 1 and tally(trials).waiting == 1


def test_outcome_from_result_or_from_the_exit_code(tmp_path: Path):
    (tmp_path / "trial.log").write_text("epoch 1\nKilled\n")
    out = read_outcome(tmp_path, -9)
    assert out.state == "failed"
    assert out.reason == ("trial process was killed by SIGKILL (out of memory?) without a result; "
                          "last output: Killed")
    assert read_outcome(tmp_path, 3).reason.startswith("trial process exited with code 3 without a result")
    (tmp_path / "result.json").write_text(json.dumps({
        "state": "complete", "reason": None, "values": [0.5, 1.25],
        "metrics": {"val/acc1": 0.5, "epochs": 2.0}, "params_m": 0.7, "latency_ms": 1.25}))
    out = read_outcome(tmp_path, 0)
    assert (out.state, out.values) == ("complete", [0.5, 1.25])
    assert out.attrs == {"val/acc1": 0.5, "epochs": 2.0, "params_m": 0.7, "latency_ms": 1.25}


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_trial_process_reports_reach_the_study_for_each_pruner(tmp_path: Path, monkeypatch, pruner):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    config = PrunerConfig(name=pruner, n_startup_trials=1)
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize",
                                pruner=make_pruner(config, 4))
    for value in (0.9, 0.8):  # finished trials to compare with
        t = study.ask()
        for epoch in (1, 2, 3, 4):
            t.report(value, epoch)
        study.tell(t, value)
    asked = study.ask()
    monkeypatch.setenv(STORAGE_ENV, url)
    # the trial process: Optuna's public storage API, no Trial(...) of its own
    child = StudyTrial("s", asked.number, config, 4)
    child.report(0.1, 1)
    child.report(0.1, 2)
    pruned = bool(child.should_prune())
    # the trial process decides as the study's own pruner does on the stored trial; median prunes (far
    # below both finished trials), hyperband does not (no peer in its bracket at that rung), so a
    # process that ignored the configured pruner fails one of the two cases
    assert pruned == study.pruner.prune(study, study.get_trials(deepcopy=False)[2])
    assert pruned == (pruner == "median")
    assert study.get_trials()[2].intermediate_values == {1: 0.1, 2: 0.1}
    assert [exit_code({"state": "failed", "reason": "diverged: nan"}, r) for r in (0, 1)] == [1, 0]
    assert exit_code({"state": "failed", "reason": "crashed: x"}, 1) == 1


def test_workers_join_only_a_study_made_from_the_same_file(tiny_study, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _, config = load_study_config(tiny_study())
    storage = open_storage(url)
    join = functools.partial(join_study, storage, "tiny", sampler=optuna.samplers.RandomSampler(),
                             pruner=optuna.pruners.NopPruner())
    join(config)
    moved = with_overrides(config, ["base.data.root=/x", "base.trainer.devices=2", "budget.n_trials=7"])
    assert join(moved).study_name == "tiny"  # where the data lies, devices and n_trials may differ
    other = with_overrides(config, ["space.stages.3.op=[conv, pssa]", "space.stages.3.shift=[]"])
    with pytest.raises(ConfigError) as err:
        join(other)
    assert str(err.value) == (f"{url}: study 'tiny' there was made from a different study file or --set "
                              "(space.stages.3.op: stored ['conv', 'pssa', 'xvol_pssa'], now ['conv', 'pssa']; "
                              "space.stages.3.shift: stored [1, 2], now []); use another storage, or the study "
                              "file and --set it was made from")
    with pytest.raises(ConfigError, match=r"\(base.optim.lr: stored 0.1, now 0.05\)"):
        join(with_overrides(config, ["base.optim.lr=0.05"]))


@pytest.mark.parametrize("heartbeat", [1, 10, 60])
def test_a_worker_waiting_for_sqlite_is_never_taken_for_a_dead_one(heartbeat):
    # A heartbeat waits at most the busy timeout; the next one comes an interval later: the grace
    # period must cover both, or a live trial would be failed and trained twice.
    assert grace_seconds(heartbeat) > busy_timeout(heartbeat) + heartbeat
    assert grace_seconds(heartbeat) >= 3 * heartbeat


def test_planned_stops_never_use_up_max_retries_only_crashes_do(tiny_study, tmp_path: Path, caplog):
    """Preemption, a time limit, a requeue (planned stops) hand a trial back however often; crashes
    (a lost worker) count against budget.max_retries, and the log says which each was."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _, config = load_study_config(tiny_study(budget={"n_trials": 1, "epochs": 1, "max_retries": 1}))
    shared = SharedStudy(open_storage(url, heartbeat=1, max_retries=1), url, "tiny", config,
                         optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner())

    def running() -> int:
        shared.study.ask()  # the waiting retry, or the first trial
        return max(t.number for t in shared.trials())

    with caplog.at_level(logging.INFO, logger="xvol_lab.study.protocol"):
        for _ in range(4):  # four planned stops with max_retries 1: every one queued again
            shared.hand_back(running(), "trial process stopped by a signal (SIGUSR1)", planned=True)
        assert [t.state for t in shared.trials()][-1] == TrialState.WAITING
        assert tally(shared.trials()).interrupted == 4 and tally(shared.trials()).finished == 0
        shared.hand_back(running(), "worker lost")  # the first crash: retried (1 of 1)
        shared.hand_back(running(), "worker lost")  # the second: spent, failed and counted
    trials = shared.trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 6
    assert tally(trials).finished == 1 and tally(trials).interrupted == 5
    assert trials[-1].user_attrs["fail_reason"] == "worker lost; not retried (budget.max_retries is 1)"
    lines = [r.getMessage() for r in caplog.records]
    assert sum("planned stop (trial process stopped by a signal (SIGUSR1)); queued again, not counted "
               "against budget.max_retries" in line for line in lines) == 4
    assert "trial 4: crash (worker lost); queued again: crash 1 of budget.max_retries 1" in lines
    assert "trial 5: crash (worker lost); not retried: crash 2 of budget.max_retries 1" in lines


def test_a_lost_worker_after_planned_stops_is_still_retried(tmp_path: Path):
    """The storage's stale-heartbeat callback counts crashes only: a trial stopped on purpose twice
    (max_retries 1) whose worker then dies is queued again once more."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=1, max_retries=1)
    study = optuna.create_study(study_name="s", storage=storage)
    study_id = storage.get_study_id_from_name("s")
    for _ in range(2):  # two planned stops, recorded as SharedStudy.hand_back records them
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, study.ask().number)
        frozen = storage.get_trial(trial_id)
        storage.set_trial_system_attr(trial_id, PLANNED, [*frozen.system_attrs.get(PLANNED, []), frozen.number])
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        RetryCrashes(1)(study, storage.get_trial(trial_id))
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, study.ask().number)
    assert crashes(storage.get_trial(trial_id)) == 0
    storage.record_heartbeat(trial_id)  # then its worker is gone
    time.sleep(grace_seconds(1) + 1.5)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.WAITING]
    assert crashes(trials[-1]) == 1 and RetryCrashes(1).spent(trials[-1])  # one crash: the next is the last
