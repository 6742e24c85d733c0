"""What a worker shows: best value / Pareto front, time left, the live panel and the log lines."""

from __future__ import annotations

import datetime
import io
import logging

import optuna
from optuna.trial import TrialState
from rich.console import Console

from xvol_lab.study.ledger import tally
from xvol_lab.study.progress import LiveView, LogView, StudyState, best_text, remaining_seconds
from xvol_lab.study.standing import best_trials

T0 = datetime.datetime(2026, 1, 1)


def done(number: int, values: list[float], minutes: float = 1.0,
         state: TrialState = TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(values=values if state == TrialState.COMPLETE else None, state=state)
    trial.number = number
    trial.datetime_start = T0
    trial.datetime_complete = T0 + datetime.timedelta(minutes=minutes)
    return trial


def test_best_value_follows_the_direction_and_pareto_front_drops_dominated_trials():
    trials = [done(0, [0.5]), done(1, [0.75]), done(2, [0.25])]
    assert best_text(trials, ["val/acc1"], ["maximize"]) == "val/acc1 0.7500 (trial 1)"
    assert best_text(trials, ["val/loss"], ["minimize"]) == "val/loss 0.2500 (trial 2)"
    assert best_text([], ["val/acc1"], ["maximize"]) == "no complete trial yet"
    multi = [done(0, [0.5, 2.0]), done(1, [0.75, 3.0]), done(2, [0.4, 2.5]), done(3, [0.75, 2.0])]
    assert [t.number for t in best_trials(multi, ["maximize", "minimize"])] == [3]
    multi.append(done(4, [0.3, 1.0]))
    front = best_trials(multi, ["maximize", "minimize"])
    assert [t.number for t in front] == [3, 4]
    text = best_text(multi, ["val/acc1", "latency_ms"], ["maximize", "minimize"])
    assert text == "Pareto front: 2 trial(s) (3, 4)"


def test_time_left_is_mean_duration_times_trials_left_over_running_workers():
    trials = [done(0, [0.5], 1.0), done(1, [0.5], 3.0), done(2, [], 9.0, TrialState.FAIL)]
    assert remaining_seconds(trials, 6, tally(trials)) == 2 * 60 * 3  # failures are not timed
    running = optuna.trial.create_trial(state=TrialState.RUNNING)
    running.number = 3
    trials.append(running)
    assert remaining_seconds(trials, 6, tally(trials)) == 2 * 60 * 3 / 1
    assert remaining_seconds([], 6, tally([])) is None


def test_live_panel_shows_trial_epoch_best_and_times():
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=True, width=120, color_system=None))
    trials = [done(0, [0.5]), done(1, [0.75])]
    best = best_text(trials, ["val/acc1"], ["maximize"])
    view.state(StudyState("stage_search", 10, tally(trials), best, 125.0))
    view.trial_started(2, "resnet18 [conv, xvol_pssa(L=2), conv, conv]")
    view.trial_progress({"epoch": 2, "epochs": 3, "batch": 5, "batches": 16, "metrics": {"val/acc1": 0.25}})
    view.trial_finished(2, "pruned", "val/acc1=0.2500 at epoch 2: MedianPruner")
    view.close()
    text = out.getvalue()
    assert "stage_search 2/10 finished (2 complete, 0 pruned, 0 failed; 0 running)" in text
    assert "best val/acc1 0.7500 (trial 1)" in text and "~2:05 left" in text
    assert "trial 2: resnet18 [conv, xvol_pssa(L=2), conv, conv]" in text
    assert "epoch 2/3, batch 5/16" in text and "last val: val/acc1 0.2500" in text
    assert "trial 2 pruned: val/acc1=0.2500 at epoch 2: MedianPruner" in text


def test_log_view_writes_one_line_per_trial_event(caplog):
    view = LogView()
    trials = [done(0, [0.5])]
    best = best_text(trials, ["val/acc1"], ["maximize"])
    view.state(StudyState("op_ablation", 5, tally(trials), best, 60.0))
    with caplog.at_level(logging.INFO, logger="xvol_lab.study"):
        view.trial_started(1, "resnet18 [conv, conv, sa, conv]")
        view.trial_finished(1, "failed", "out of memory: OutOfMemoryError: CUDA out of memory")
    assert caplog.messages[0] == "trial 1 started (1/5 finished): resnet18 [conv, conv, sa, conv]"
    assert caplog.messages[1].startswith("trial 1 failed: out of memory: OutOfMemoryError: CUDA out of "
                                         "memory | best val/acc1 0.5000 (trial 0) | elapsed ")
    assert caplog.messages[1].endswith("~1:00 left")
