"""The engine under faults: retries continue from the last checkpoint, kill -9 at each kill window,
SIGTERM during the tell, preempted trial processes, and several workers racing on one SQLite file."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _study_processes import load, run_command, trial_pids, wait_for
from optuna.trial import TrialState

from xvol_lab.study import worker as worker_module
from xvol_lab.study.config import load_study_config
from xvol_lab.study.faults import FAULT_ENV
from xvol_lab.study.ledger import counted, retry_history, retry_of, tally
from xvol_lab.study.outcome import Outcome
from xvol_lab.study.progress import LogView
from xvol_lab.study.space import expand_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

pytestmark = pytest.mark.slow  # every test starts study and trial processes


def trainings(folder: Path) -> dict[str, int]:
    """seed run folder -> how many trial processes finished training in it (from its trial.log)."""
    return {str(log.parent.relative_to(folder)): len(re.findall(r"trial \d+ (?:complete|pruned|failed)",
                                                                log.read_text()))
            for log in sorted(folder.glob("trial_*/seed_*/trial.log"))}


def val_epochs(metrics_csv: Path) -> list[int]:
    rows = [line.split(",") for line in metrics_csv.read_text().splitlines()]
    header = rows[0]
    return [int(r[header.index("epoch")]) for r in rows[1:] if r[header.index("val/acc1")]]


def test_retry_continues_from_the_last_checkpoint_and_ends_as_an_uninterrupted_run(tiny_study, lab_env,
                                                                                   tmp_path: Path):
    path = tiny_study("resume", budget={"n_trials": 1, "epochs": 3},
                      pruner={"name": "median", "n_startup_trials": 5})
    runs = tmp_path / "runs"
    worker = subprocess.Popen(run_command(path, runs), cwd=tmp_path, env=lab_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    seed_dir = runs / "resume" / "trial_0" / "seed_0"
    wait_for(lambda: (seed_dir / "checkpoints" / "last.ckpt").is_file(), 300, "the first checkpoint")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    wait_for(lambda: not trial_pids(str(seed_dir)), 15, "the trial process to die with the study process")
    assert not (seed_dir / "result.json").exists()
    done = subprocess.run(run_command(path, runs), cwd=tmp_path, env=lab_env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(runs, "resume").get_trials()
    assert (tally(trials).finished, tally(trials).interrupted) == (1, 1)
    retry = trials[-1]
    assert retry_of(retry) == 0 and retry.state == TrialState.COMPLETE
    assert sorted(p.name for p in (runs / "resume").glob("trial_*")) == ["trial_0"]  # the same folder
    log = (seed_dir / "trial.log").read_text()
    assert log.count("Restored all states from the checkpoint") == 1  # continued, not started over
    assert val_epochs(seed_dir / "metrics.csv") == [1, 2, 3]  # every epoch once, counted from 1
    assert sorted(retry.intermediate_values) == [1, 2, 3]  # inherited, then the remaining epochs
    resumed = json.loads((seed_dir / "result.json").read_text())
    # The same seed run, uninterrupted, in a trial process of its own (no storage: no reports).
    reference = tmp_path / "reference"
    reference.mkdir()
    request = json.loads((seed_dir / "trial.json").read_text())
    (reference / "trial.json").write_text(json.dumps({**request, "resume": None, "report": None}))
    straight = subprocess.run([sys.executable, "-m", "xvol_lab.study.trial", str(reference)], cwd=tmp_path,
                              env=lab_env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    last_line = f"xvol_lab.study.trial: trial {retry.number} complete"
    assert straight.stderr.rstrip().endswith(last_line)  # logs flushed before the os._exit
    expected = json.loads((reference / "result.json").read_text())
    assert resumed["metrics"] == expected["metrics"]  # exactly equal on CPU
    assert resumed["values"] == expected["values"] == retry.values


def test_preempted_trial_process_is_handed_back_however_often_max_retries_is_for_crashes(tiny_study, lab_env,
                                                                                        tmp_path: Path):
    path = tiny_study("preempt", budget={"n_trials": 1, "epochs": 2, "max_retries": 1})
    runs = tmp_path / "runs"
    worker = subprocess.Popen(run_command(path, runs), cwd=tmp_path, env=lab_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    seed_dir = runs / "preempt" / "trial_0" / "seed_0"
    marker = str(seed_dir)
    wait_for(lambda: (seed_dir / "progress.json").is_file() and trial_pids(marker), 300, "trial 0 to train")
    first = trial_pids(marker)[0]
    os.kill(first, signal.SIGTERM)  # scancel / the scheduler preempts the trial process
    wait_for(lambda: any(p != first for p in trial_pids(marker)), 300, "the retry to start in its folder")
    os.kill(next(p for p in trial_pids(marker) if p != first), signal.SIGUSR1)  # SLURM's warning signal
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-3000:]
    trials = load(runs, "preempt").get_trials()
    # two planned stops with max_retries 1: both queued again, the second retry completes
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert retry_history(trials[2]) == [0, 1] and (tally(trials).finished, tally(trials).interrupted) == (1, 2)
    assert err.count("(planned stop, not counted against budget.max_retries); it is queued again") == 2
    assert "stopped by SIGTERM; its last checkpoint is kept" in (seed_dir / "trial.log").read_text()


def test_kill_windows_and_sigterm_in_the_tell_lose_and_repeat_nothing(tiny_study, lab_env, tmp_path: Path):
    path = tiny_study("windows", sampler={"name": "grid"}, budget={"epochs": 1},
                      space={"stages": {3: {"op": ["conv", "pssa", "xvol_pssa"]}}})
    runs = tmp_path / "runs"

    def run(fault: str | None) -> subprocess.CompletedProcess[str]:
        env = {**lab_env, FAULT_ENV: fault} if fault else lab_env
        return subprocess.run(run_command(path, runs), cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)

    assert run("after_ask").returncode == -signal.SIGKILL  # a RUNNING trial without a heartbeat
    assert [t.state for t in load(runs, "windows").get_trials()] == [TrialState.RUNNING]
    stopped = run("in_tell:TERM")  # SIGTERM arrives inside the tell: held until the tell is done
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    told = [t for t in load(runs, "windows").get_trials() if t.state == TrialState.COMPLETE]
    assert len(told) == 1 and told[0].values  # the result was not lost
    assert run("in_tell").returncode == -signal.SIGKILL  # killed after training, before the tell
    done = run(None)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "windows: 3/3 finished" in done.stdout
    trials = load(runs, "windows").get_trials()
    _, config = load_study_config(path)
    grid = expand_space(config.space, config.base.model)
    finished = counted(trials)
    assert len(finished) == 3 and sorted(map(str, (t.params for t in finished))) == sorted(map(str, grid))
    assert all(t.state == TrialState.COMPLETE for t in finished)
    assert list(trainings(runs / "windows").values()) == [1, 1, 1]  # each point trained exactly once


def _racing_worker(path: str, runs: str) -> None:
    """A worker that, just before it asks, loses the race for the last slot: another worker (on a
    server storage, which has no study lock) asks at the same instant and dies at once. The worker
    voids its own trial, and XVOL_FAULT=after_void kills it there."""
    _, config = load_study_config(path)
    ask = optuna.Study.ask

    def racing_ask(study, *args, **kwargs):
        ask(study)  # the other worker's trial: RUNNING, never started
        return ask(study, *args, **kwargs)

    optuna.Study.ask = racing_ask
    os.environ[FAULT_ENV] = "after_void"
    worker_module.Worker("void", config, runs=Path(runs), view=LogView(), poll=0.05).run()


def test_kill_9_after_the_void_decision_ends_with_exactly_n_and_trains_once(tiny_study, lab_env, tmp_path: Path):
    path = tiny_study("void", budget={"n_trials": 1, "epochs": 1})
    runs = tmp_path / "runs"
    racer = multiprocessing.get_context("fork").Process(target=_racing_worker, args=(str(path), str(runs)))
    racer.start()
    racer.join(120)
    assert racer.exitcode == -signal.SIGKILL  # killed right after voiding its trial
    before = load(runs, "void").get_trials()
    assert [t.state for t in before] == [TrialState.RUNNING, TrialState.FAIL]
    assert before[1].user_attrs["fail_reason"] == "not run: the budget of 1 trials was taken by other workers"
    done = subprocess.run(run_command(path, runs), cwd=tmp_path, env=lab_env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "void: 1/1 finished" in done.stdout
    trials = load(runs, "void").get_trials()
    t = tally(trials)
    assert (t.finished, t.void, t.interrupted) == (1, 1, 1)  # the void trial is neither counted nor retried
    finished = counted(trials)
    assert len(finished) == 1 and retry_of(finished[0]) == 0 and finished[0].state == TrialState.COMPLETE
    assert list(trainings(runs / "void").values()) == [1]  # one slot, trained once


def _fake_worker(path: str, runs: str, log: str) -> None:
    """A worker whose trials 'train' in 50 ms and log their point (for the race test)."""
    _, config = load_study_config(path)

    def train(self, trial, role=None):
        from xvol_lab.study.space import suggest_spec

        suggest_spec(trial, self.config.space, self.config.base.model)
        with open(log, "a") as f:
            f.write(json.dumps(trial.params, sort_keys=True) + "\n")
        time.sleep(0.05)
        return Outcome("complete", None, [0.5], {})

    worker_module.Worker._train = train
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker_module.Worker("race", config, runs=Path(runs), view=LogView(), poll=0.05).run()


@pytest.mark.parametrize("attempt", range(3))
def test_three_workers_on_one_sqlite_file_run_each_grid_point_once(tiny_study, tmp_path: Path, attempt):
    path = tiny_study("race", sampler={"name": "grid"}, budget={"epochs": 1},
                      space={"stages": {3: {"op": ["conv", "pssa", "xvol_pssa"], "shift": [1, 2, 3]},
                                        4: {"op": ["conv", "xvol_sa"]}}})
    _, config = load_study_config(path)
    log = tmp_path / "trained.log"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_fake_worker, args=(str(path), str(tmp_path / "runs"), str(log)))
               for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    trials = load(tmp_path / "runs", "race").get_trials()
    n = config.n_trials
    assert len(trials) == n == 14  # no void trial, no repeat: the lock serialises the asks
    assert tally(trials).finished == n and all(t.state == TrialState.COMPLETE for t in trials)
    trained = log.read_text().splitlines()
    assert len(trained) == len(set(trained)) == n  # every point trained once
    shutil.rmtree(tmp_path / "runs")
