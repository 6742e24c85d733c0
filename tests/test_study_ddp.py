"""A DDP trial (2 CPU processes, gloo, started by torch.distributed.run) is exactly one Optuna trial."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from xvol_lab.errors import ConfigError
from xvol_lab.study.launch import trial_command

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.slow
def test_two_process_trial_is_one_trial(tiny_study, run_lab, tmp_path: Path):
    path = tiny_study("ddp", budget={"n_trials": 1, "epochs": 2},
                      pruner={"name": "median", "n_startup_trials": 0})
    runs = tmp_path / "runs"
    done = run_lab("study", "run", str(path), "--runs", str(runs), "--devices", "2", "--no-live")
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="ddp", storage=f"sqlite:///{runs / 'ddp' / 'study.db'}")
    trials = study.get_trials()
    assert len(trials) == 1 and trials[0].state == TrialState.COMPLETE
    trial_dir = runs / "ddp" / "trial_0" / "seed_0"  # the run folder of the trial's one seed
    log = (trial_dir / "trial.log").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    result = json.loads((trial_dir / "result.json").read_text())
    assert trials[0].values == result["values"]
    assert sorted(trials[0].intermediate_values) == [1, 2]  # rank 0 reported each epoch once
    config = (trial_dir / "config.yaml").read_text()
    assert "devices: 2" in config and "strategy: ddp" in config


def test_launch_commands(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert trial_command(tmp_path, 1, 1)[1:] == ["-m", "xvol_lab.study.trial", str(tmp_path)]
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert trial_command(tmp_path, 4, 1)[1:] == [*torchrun, "-m", "xvol_lab.study.trial", str(tmp_path)]
    with pytest.raises(ConfigError, match="--nodes 2: multi-node trials run through srun"):
        trial_command(tmp_path, 1, 2)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    srun = trial_command(tmp_path, 4, 2)  # the flags one by one: tests/test_study_launch.py
    assert srun[:4] == ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4"]
    assert srun[-3:] == ["-m", "xvol_lab.study.trial", str(tmp_path)]
