"""Studies end to end on tiny data: trial processes, storage, artifacts, sharing, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import FixedTrial, TrialState

from xvol_lab.cli.main import main
from xvol_lab.models import BackboneSpec
from xvol_lab.study.config import load_study_config
from xvol_lab.study.ledger import counted, tally
from xvol_lab.study.space import expand_space, suggest_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[1]


def load(runs: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs / name / 'study.db'}")


def run_command(path: Path, runs: Path) -> list[str]:
    return [sys.executable, str(REPO / "lab.py"), "study", "run", str(path), "--runs", str(runs), "--no-live"]


def trial_pids(marker: str) -> list[int]:
    """Processes whose command line runs a trial and mentions `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "xvol_lab.study.trial" in cmd and marker in cmd:
            pids.append(int(entry.name))
    return pids


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_study_end_to_end(tiny_study, run_lab, tmp_path: Path, capsys):
    path = tiny_study(enqueue=[{"stage3.op": "conv"}], pruner={"name": "median", "n_startup_trials": 1})
    runs = tmp_path / "runs"
    done = run_lab("study", "run", str(path), "--runs", str(runs), "--no-live")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny: 3/3 finished" in done.stdout
    study = load(runs, "tiny")
    trials = study.get_trials()
    assert len(trials) == 3 and tally(trials).finished == 3
    assert trials[0].params == {"stage3.op": "conv"}  # the enqueued point runs first
    _, config = load_study_config(path)
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == (runs / "tiny" / f"trial_{t.number}").resolve()
        for name in ("config.yaml", "spec.json", "metrics.csv", "checkpoints/best.ckpt", "trial.log",
                     "result.json"):
            assert (run_dir / name).is_file(), name
        result = json.loads((run_dir / "result.json").read_text())
        assert result["state"] == {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}[t.state]
        assert t.user_attrs["val/acc1"] == result["metrics"]["val/acc1"]
        assert t.user_attrs["epochs"] == result["metrics"]["epochs"]
        spec = BackboneSpec.from_json((run_dir / "spec.json").read_text())
        assert suggest_spec(FixedTrial(t.params), config.space, config.base.model) == spec
        if t.state == TrialState.COMPLETE:
            assert t.values == result["values"] == [result["metrics"]["val/acc1"]]
            assert t.user_attrs["params_m"] == result["params_m"] > 0
            assert t.user_attrs["latency_ms"] == result["latency_ms"] > 0
            assert sorted(t.intermediate_values) == [1, 2]  # reported every epoch; the best one is kept
            assert max(t.intermediate_values.values()) == result["metrics"]["val/acc1"]
        else:
            assert t.user_attrs["prune_reason"] == result["reason"]
            assert result["reason"].startswith("val/acc1=") and "MedianPruner" in result["reason"]
    assert main(["study", "status", str(path), "--runs", str(runs)]) == 0
    status = capsys.readouterr().out
    assert "tiny: 3/3 finished" in status and "best: val/acc1" in status
    assert main(["study", "run", str(path), "--runs", str(runs), "--no-live"]) == 0  # nothing left to do
    assert "tiny: 3/3 finished" in capsys.readouterr().out and len(load(runs, "tiny").get_trials()) == 3


def test_diverging_trials_fail_with_their_reason_and_the_study_goes_on(tiny_study, run_lab, tmp_path: Path):
    path = tiny_study("nan", base={"optim": {"lr": 1e30, "warmup_epochs": 0}}, sampler={"name": "grid"},
                      space={"stages": {3: {"op": ["conv", "pssa"]}}}, budget={"epochs": 1})
    runs = tmp_path / "runs"
    done = run_lab("study", "run", str(path), "--runs", str(runs), "--no-live")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(runs, "nan").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    for t in trials:
        assert t.user_attrs["fail_reason"].startswith("diverged: train/loss is nan at epoch 0")
        result = json.loads((runs / "nan" / f"trial_{t.number}" / "result.json").read_text())
        assert result == {"reason": t.user_attrs["fail_reason"], "state": "failed"}


def test_two_workers_share_a_grid_and_run_each_point_once(tiny_study, lab_env, tmp_path: Path):
    path = tiny_study("grid", sampler={"name": "grid"}, budget={"epochs": 1},
                      space={"stages": {3: {"op": ["conv", "pssa"]}, 4: {"op": ["conv", "xvol_pssa"]}}})
    runs = tmp_path / "runs"
    command = run_command(path, runs)
    workers = [subprocess.Popen(command, cwd=tmp_path, env=lab_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outputs]
    trials = load(runs, "grid").get_trials()
    _, config = load_study_config(path)
    grid = expand_space(config.space, config.base.model)
    finished = counted(trials)
    assert len(finished) == len(grid) == 4
    assert sorted(map(str, (t.params for t in finished))) == sorted(map(str, grid))
    assert all(t.state == TrialState.COMPLETE for t in finished)


def test_kill_9_mid_trial_then_resume_ends_with_exactly_n_trials(tiny_study, lab_env, tmp_path: Path):
    path = tiny_study("resume", budget={"n_trials": 2, "epochs": 2})
    runs = tmp_path / "runs"
    command = run_command(path, runs)
    worker = subprocess.Popen(command, cwd=tmp_path, env=lab_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    marker = str(runs / "resume" / "trial_0")
    wait_for(lambda: (runs / "resume" / "trial_0" / "progress.json").is_file(), 120, "trial 0 to train")
    children = trial_pids(marker)
    assert children
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    wait_for(lambda: not trial_pids(marker), 15, "the trial process to die with the study process")
    interrupted = load(runs, "resume").get_trials()
    assert [t.state for t in interrupted] == [TrialState.RUNNING]
    resumed = subprocess.run(command, cwd=tmp_path, env=lab_env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: 2/2 finished" in resumed.stdout
    trials = load(runs, "resume").get_trials()
    t = tally(trials)
    assert (t.finished, t.interrupted, t.running, t.waiting) == (2, 1, 0, 0)
    assert trials[0].state == TrialState.FAIL
    retry = next(u for u in trials if u.system_attrs.get("failed_trial") == 0)
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params
    result = json.loads((runs / "resume" / f"trial_{retry.number}" / "result.json").read_text())
    assert result["values"] == retry.values


def test_list_shows_shipped_studies_and_their_progress(tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    (runs / "op_ablation").mkdir(parents=True)
    storage = f"sqlite:///{runs / 'op_ablation' / 'study.db'}"
    study = optuna.create_study(study_name="op_ablation", storage=storage, direction="maximize")
    for value in (0.5, 0.75):
        study.add_trial(optuna.trial.create_trial(value=value))
    assert main(["study", "list", "--runs", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "op_ablation        grid     5 trials  2/5 finished, best val/acc1 0.7500 (trial 1)" in lines
    assert "stage_search       tpe     10 trials  not started" in lines
    assert not (runs / "stage_search").exists()
