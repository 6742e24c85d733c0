"""Studies end to end on tiny data: trial processes, storage, artifacts, sharing, kill -9 and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from _study_processes import load, run_command, trial_pids, wait_for
from optuna.trial import FixedTrial, TrialState

from xvol_lab.cli.main import main
from xvol_lab.models import BackboneSpec
from xvol_lab.study import worker as worker_module
from xvol_lab.study.config import load_study_config
from xvol_lab.study.ledger import counted, retry_of, tally
from xvol_lab.study.progress import LogView
from xvol_lab.study.space import expand_space, suggest_spec
from xvol_lab.tasks.config import load_run_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.slow
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
        run_dir = Path(t.user_attrs["run_dir"])  # one seed (budget.seeds: 1): base.seed 0
        assert run_dir == (runs / "tiny" / f"trial_{t.number}" / "seed_0").resolve()
        assert Path(t.user_attrs["trial_dir"]) == run_dir.parent
        assert t.user_attrs["seeds"] == [0]
        for name in ("config.yaml", "spec.json", "metrics.csv", "checkpoints/best.ckpt", "trial.log",
                     "result.json"):
            assert (run_dir / name).is_file(), name
        result = json.loads((run_dir / "result.json").read_text())
        assert result["state"] == {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}[t.state]
        assert t.user_attrs["val/acc1"] == result["metrics"]["val/acc1"]
        assert t.user_attrs["per_seed"]["val/acc1"] == [result["metrics"]["val/acc1"]]
        assert t.user_attrs["epochs"] == result["metrics"]["epochs"]
        fingerprint = json.loads((run_dir / "fingerprint.json").read_text())  # the environment it ran in
        assert t.user_attrs["fingerprint"] == result["fingerprint"] == fingerprint
        assert fingerprint["threads"] == 1 and fingerprint["precision"] == "32-true"  # OMP_NUM_THREADS=1
        assert fingerprint["torch"] == torch.__version__ and fingerprint["device"].startswith("cpu: ")
        assert fingerprint["kernel_build_failed"] is False
        assert fingerprint["backend"] == ("none" if t.params["stage3.op"] == "conv" else "cpu")
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


@pytest.mark.slow
def test_diverging_trials_fail_with_their_reason_and_the_study_goes_on(tiny_study, run_lab, tmp_path: Path):
    path = tiny_study("nan", base={"optim": {"lr": 1e30, "warmup_epochs": 0}}, sampler={"name": "grid"},
                      space={"stages": {3: {"op": ["conv", "pssa"]}}}, budget={"epochs": 1, "seeds": 2})
    runs = tmp_path / "runs"
    done = run_lab("study", "run", str(path), "--runs", str(runs), "--no-live")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(runs, "nan").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    for t in trials:
        reason = t.user_attrs["fail_reason"]
        assert reason.startswith("diverged: train/loss is nan at epoch 1") and reason.endswith(" (seed 0)")
        folder = runs / "nan" / f"trial_{t.number}"
        result = json.loads((folder / "seed_0" / "result.json").read_text())
        assert {k: result[k] for k in ("reason", "state")} == {"reason": reason.removesuffix(" (seed 0)"),
                                                                "state": "failed"}
        assert result["fingerprint"]["threads"] >= 1  # what the seed ran on, even when it failed
        assert not (folder / "seed_1").exists()  # a failed seed fails the configuration: no more seeds
        assert (t.user_attrs["seeds"], t.user_attrs["per_seed"]) == ([0], {})


def seed_runs(folder: Path) -> list[tuple[str, int]]:
    """(architecture, seed) of every seed run folder with a result under a study folder."""
    runs = []
    for result in sorted(folder.glob("trial_*/seed_*/result.json")):
        config = load_run_config(result.parent / "config.yaml")
        assert result.parent.name == f"seed_{config.seed}"
        runs.append((config.model.to_json(), config.seed))
    return runs


def finish_lines(log: Path) -> int:
    """How many trial processes ended in this run folder (their last log line)."""
    return len(re.findall(r"trial \d+ (?:complete|pruned|failed)", log.read_text()))


def assert_seed_attrs(t: optuna.trial.FrozenTrial, seeds: list[int]) -> None:
    """The trial's attrs and values are those of its seeds' result.json files (the storage format)."""
    results = [json.loads((Path(t.user_attrs["trial_dir"]) / f"seed_{s}" / "result.json").read_text())
               for s in seeds]
    assert t.user_attrs["seeds"] == seeds
    per_seed = t.user_attrs["per_seed"]
    assert per_seed["val/acc1"] == [r["metrics"]["val/acc1"] for r in results]
    assert per_seed["params_m"] == [r["params_m"] for r in results]
    assert per_seed["latency_ms"] == [r["latency_ms"] for r in results]
    assert per_seed["epochs"] == [r["metrics"]["epochs"] for r in results]
    for name, values in per_seed.items():
        assert t.user_attrs[name] == statistics.fmean(values)  # plain attr: the mean over seeds
    assert t.values == [statistics.fmean(r["values"][0] for r in results)]


@pytest.mark.slow
def test_two_workers_share_a_seeded_grid_and_run_each_point_and_seed_once(tiny_study, lab_env, tmp_path):
    """Without --workers: trials of one CPU thread each fill the cores (2 workers on 2 cores or more)."""
    path = tiny_study("grid", sampler={"name": "grid"}, budget={"epochs": 1, "seeds": 2},
                      base={"seed": 3, "trainer": {"threads": 1}}, space={"stages": {3: {"op": ["conv", "pssa"]}}})
    runs = tmp_path / "runs"
    workers = [] if len(os.sched_getaffinity(0)) >= 2 else ["--workers", "2"]
    done = subprocess.run([*run_command(path, runs), *workers], cwd=tmp_path, env=lab_env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "grid: 2/2 finished" in done.stdout
    trials = load(runs, "grid").get_trials()
    assert max(t.datetime_start for t in trials) < min(t.datetime_complete for t in trials)  # at once
    _, config = load_study_config(path)
    grid = expand_space(config.space, config.base.model)
    finished = counted(trials)
    assert len(finished) == len(grid) == config.n_trials == 2  # n_trials counts configurations
    assert sorted(map(str, (t.params for t in finished))) == sorted(map(str, grid))
    assert all(t.state == TrialState.COMPLETE for t in finished)
    specs = [suggest_spec(FixedTrial(p), config.space, config.base.model).to_json() for p in grid]
    assert sorted(seed_runs(runs / "grid")) == sorted((s, seed) for s in specs for seed in (3, 4))
    for t in finished:
        assert_seed_attrs(t, [3, 4])
        assert t.user_attrs["fingerprint"]["threads"] == 1
    datasets = [p for p in (tmp_path / "data" / "shapes").iterdir() if not p.name.startswith(".")]
    assert len(datasets) == 1  # the seed never changes the dataset


@pytest.mark.slow
def test_kill_9_during_a_seeded_trial_then_resume_keeps_finished_seeds(tiny_study, lab_env, tmp_path: Path):
    path = tiny_study("resume", budget={"n_trials": 1, "epochs": 2, "seeds": 2})
    runs = tmp_path / "runs"
    command = run_command(path, runs)
    worker = subprocess.Popen(command, cwd=tmp_path, env=lab_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    folder = runs / "resume" / "trial_0"
    wait_for(lambda: (folder / "seed_1" / "progress.json").is_file(), 300, "seed 1 of trial 0 to train")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    marker = str(folder)
    wait_for(lambda: not trial_pids(marker), 15, "the trial process to die with the study process")
    assert not (folder / "seed_1" / "result.json").exists()  # killed mid-seed
    first = (folder / "seed_0" / "result.json").stat()
    interrupted = load(runs, "resume").get_trials()
    assert [t.state for t in interrupted] == [TrialState.RUNNING]
    resumed = subprocess.run(command, cwd=tmp_path, env=lab_env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: 1/1 finished" in resumed.stdout
    trials = load(runs, "resume").get_trials()
    t = tally(trials)
    assert (t.finished, t.interrupted, t.running, t.waiting) == (1, 1, 0, 0)
    retry = next(u for u in trials if retry_of(u) == 0)
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params
    assert retry.user_attrs["trial_dir"] == str(folder.resolve())  # the retry continued trial_0's folder
    assert sorted(p.name for p in (runs / "resume").iterdir() if p.name.startswith("trial_")) == ["trial_0"]
    again = (folder / "seed_0" / "result.json").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # seed 0 was kept
    assert [finish_lines(folder / f"seed_{s}" / "trial.log") for s in (0, 1)] == [1, 1]  # nothing ran twice
    assert_seed_attrs(retry, [0, 1])


@pytest.mark.slow
def test_tpe_is_told_one_value_per_configuration(tiny_study, tmp_path: Path, monkeypatch):
    path = tiny_study("tpe", sampler={"name": "tpe", "seed": 0, "n_startup_trials": 1},
                      pruner={"name": "median", "n_startup_trials": 5},
                      budget={"n_trials": 2, "epochs": 2, "seeds": 2})
    name, config = load_study_config(path)
    told: list[tuple[int, TrialState, list[float] | None]] = []
    real = worker_module.base_sampler_factory

    def recording(cfg, n_objectives):
        inner = real(cfg, n_objectives)
        return lambda seed: Recorder(inner(seed), told)

    monkeypatch.setattr(worker_module, "base_sampler_factory", recording)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    final = worker_module.run_study(name, config, runs=tmp_path / "runs", view=LogView())
    assert final.finished == 2
    trials = load(tmp_path / "runs", name).get_trials()
    assert len(trials) == 2  # the repeats over seeds are no trials of their own
    assert [(n, state) for n, state, _ in told] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE)]
    for t, (_, _, values) in zip(trials, told, strict=True):
        assert values == t.values == [statistics.fmean(t.user_attrs["per_seed"]["val/acc1"])]
        assert_seed_attrs(t, [0, 1])
        # pruning steps: seed i's epoch e is step i * epochs + e; each seed's best epoch is its value
        steps = t.intermediate_values
        assert sorted(steps) == [1, 2, 3, 4]
        assert [max(steps[1], steps[2]), max(steps[3], steps[4])] == t.user_attrs["per_seed"]["val/acc1"]


class Recorder(optuna.samplers.BaseSampler):
    """A sampler that delegates to `inner` and records what the study tells it after each trial."""

    def __init__(self, inner: optuna.samplers.BaseSampler, told: list) -> None:
        self.inner, self.told = inner, told

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.told.append((trial.number, state, None if values is None else list(values)))
        self.inner.after_trial(study, trial, state, values)


def test_list_names_a_storage_made_from_another_study_file(tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    (runs / "op_ablation").mkdir(parents=True)
    storage = f"sqlite:///{runs / 'op_ablation' / 'study.db'}"
    study = optuna.create_study(study_name="op_ablation", storage=storage,
                                directions=["maximize", "maximize"])  # an older op_ablation.yaml: two objectives
    study.add_trial(optuna.trial.create_trial(values=[0.5, 0.9]))
    assert main(["study", "list", "--runs", str(runs)]) == 0
    assert ("op_ablation        grid     7 trials  1/7 finished in a storage made from a different study file "
            "(objectives)") in capsys.readouterr().out.splitlines()


def test_list_shows_shipped_studies_and_their_progress(tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    (runs / "op_ablation").mkdir(parents=True)
    storage = f"sqlite:///{runs / 'op_ablation' / 'study.db'}"
    study = optuna.create_study(study_name="op_ablation", storage=storage, direction="maximize")  # val/acc1
    for value in (0.5, 0.75):
        study.add_trial(optuna.trial.create_trial(value=value))
    assert main(["study", "list", "--runs", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "op_ablation        grid     7 trials  2/7 finished, best val/acc1 0.7500 (trial 1)" in lines
    assert "stage_search       tpe     10 trials  not started" in lines
    assert not (runs / "stage_search").exists()
