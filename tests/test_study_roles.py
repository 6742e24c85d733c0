"""The worker's side of controls and added seeds (`xvol_lab.study.roles`, `SeedRunner.run`), without
training: seed outcomes are written as result files or returned by a stand-in for the trial process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from optuna.trial import FixedTrial, create_trial

from xvol_lab.study import roles, sequential
from xvol_lab.study.config import PrunerConfig, load_study_config
from xvol_lab.study.controls import NegativeControl
from xvol_lab.study.files import RESULT, write_json
from xvol_lab.study.outcome import Outcome
from xvol_lab.study.progress import LogView
from xvol_lab.study.seed_share import SHARE
from xvol_lab.study.seeds import SeedRunner, seed_dir

BASE = [0.60, 0.64, 0.58, 0.62, 0.66]


@pytest.fixture
def config(tmp_path):
    data = {"base": {"data": {"name": "shapes", "root": str(tmp_path / "data"), "image_size": 16,
                              "num_train": 64, "num_val": 32, "batch_size": 16, "num_workers": 0},
                     "model": {"block": "basic", "depths": [1, 1, 1, 1], "width_mult": 0.125, "stem": "small"},
                     "trainer": {"accelerator": "cpu"}},
            "space": {"stages": {3: {"op": ["conv", "pssa"]}}},
            "sampler": {"name": "grid"}, "budget": {"epochs": 1, "seeds": {"min": 3, "max": 5}},
            "controls": {"positive": {"name": "SA in stage 4", "params": {"stage4.op": "sa"}},
                         "negative": {"name": "itself"}}}
    path = tmp_path / "roles.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_study_config(path)[1]


def baseline_trial(tmp_path: Path, values: list[float]):
    trial_dir = tmp_path / "trial_0"
    for seed, value in enumerate(values):
        seed_dir(trial_dir, seed).mkdir(parents=True)
        write_json(seed_dir(trial_dir, seed) / RESULT, {"state": "complete", "values": [value], "metrics": {}})
    return create_trial(values=[0.6], user_attrs={roles.BASELINE_ATTR: True, "trial_dir": str(trial_dir)})


def test_controls_get_their_network_seeds_and_mark(config):
    trial = FixedTrial({})
    spec = roles.trial_spec(config, trial, "positive")
    assert [s.op for s in spec.stages] == ["conv", "conv", "conv", "sa"]
    assert trial.user_attrs == {"control": "positive"}
    assert roles.trial_seeds(config, "negative") == [10000, 10001, 10002, 10003, 10004]
    assert roles.trial_seeds(config, "positive") == roles.trial_seeds(config, None) == [0, 1, 2, 3, 4]
    # the negative control's i-th run keeps the baseline's i-th training order; the rest follow their seeds
    assert roles.trial_order_seeds(config, "negative") == [0, 1, 2, 3, 4]
    assert roles.trial_order_seeds(config, "positive") is roles.trial_order_seeds(config, None) is None
    disjoint = dataclasses.replace(config, controls=dataclasses.replace(
        config.controls, negative=NegativeControl("itself", training_order="disjoint")))
    assert roles.trial_order_seeds(disjoint, "negative") is None
    fewer = dataclasses.replace(config, controls=dataclasses.replace(
        config.controls, positive=dataclasses.replace(config.controls.positive, seeds=3)))
    assert roles.trial_seeds(fewer, "positive") == [0, 1, 2]  # the baseline's first three
    assert roles.trial_seeds(fewer, "negative") == roles.trial_seeds(config, "negative")
    baseline = FixedTrial({"stage3.op": "conv"})
    assert roles.trial_spec(config, baseline, "baseline").stages[2].op == "conv"
    assert baseline.user_attrs == {"baseline": True}


def test_stop_rule_reads_the_baseline_and_decides_by_the_design(config, tmp_path):
    trials = [baseline_trial(tmp_path, BASE[:4])]  # seed 4 of the baseline not finished yet
    assert roles.stop_rule(config, lambda: trials, "baseline") is None
    decided = roles.stop_rule(config, lambda: trials, None)
    rows = config.n_trials - 1  # 2 grid points + 2 controls, all but the baseline
    far = [b - 0.3 + 0.001 * i for i, b in enumerate(BASE)]
    assert rows == 3 and decided(far[:3])
    assert sequential.sequential_p([f - b for f, b in zip(far[:3], BASE, strict=False)],
                                   config.budget.design) < 0.05 / 3
    assert not decided(far[:2])  # before the first look
    close = [b + d for b, d in zip(BASE, [0.01, -0.02, 0.015, 0.0, 0.01], strict=True)]
    assert not decided(close[:4])
    assert not decided(far[:5])  # the baseline has no seed 4 yet: the look is skipped, not decided


def test_seed_runner_stops_when_decided_and_keeps_the_pruner_off_controls(config, tmp_path, monkeypatch):
    """... and offers its seeds to other workers (`seed_share`) only where every seed runs unpruned."""
    calls, offered = [], []

    def fake_seed(self, number, run_dir, request, claim):
        calls.append((request.config.seed, request.report is not None))
        offered.append((run_dir.parent / SHARE).exists())
        index = request.step_offset // config.budget.epochs
        return Outcome("complete", values=[0.3 + 0.01 * index], attrs={"val/acc1": 0.3})

    monkeypatch.setattr(SeedRunner, "_run_seed", fake_seed)
    pruned = dataclasses.replace(config, pruner=PrunerConfig(name="median"))
    runner = SeedRunner("roles", pruned, "sqlite://", LogView())
    spec = roles.trial_spec(config, FixedTrial({}), "positive")
    outcome = runner.run(7, spec, tmp_path / "trial_7", seeds=[0, 1, 2, 3, 4],
                         decided=lambda values: len(values) >= 3, prune=False)
    assert calls == [(0, False), (1, False), (2, False)]
    assert outcome.state == "complete" and outcome.attrs["seeds"] == [0, 1, 2]
    assert outcome.values == pytest.approx([0.31])
    calls.clear()
    runner.run(8, spec, tmp_path / "trial_8")  # no rule: every seed of the study
    assert [seed for seed, _ in calls] == [0, 1, 2, 3, 4] and all(prune for _, prune in calls)
    assert not any(offered)  # a stop rule or a pruner decides, in order, which seeds run
    calls.clear()
    runner.run(9, spec, tmp_path / "trial_9", prune=False)
    assert calls == [(s, False) for s in range(5)] and offered[-5:] == [True] * 5
    assert not (tmp_path / "trial_9" / SHARE).exists()  # withdrawn at the end


def test_seed_runner_gives_each_run_its_training_order(config, tmp_path, monkeypatch):
    runs = []

    def fake_seed(self, number, run_dir, request, claim):
        c = request.config
        runs.append((run_dir.name, c.seed, c.order_seed, c.training_order_seed))
        return Outcome("complete", values=[0.5], attrs={"val/acc1": 0.5})

    monkeypatch.setattr(SeedRunner, "_run_seed", fake_seed)
    runner = SeedRunner("roles", config, "sqlite://", LogView())
    spec = roles.trial_spec(config, FixedTrial({}), "negative")
    runner.run(9, spec, tmp_path / "trial_9", seeds=roles.trial_seeds(config, "negative")[:2],
               order_seeds=roles.trial_order_seeds(config, "negative")[:2])
    assert runs == [("seed_10000", 10000, 0, 0), ("seed_10001", 10001, 1, 1)]
    runs.clear()
    runner.run(10, spec, tmp_path / "trial_10", seeds=[3])
    assert runs == [("seed_3", 3, None, 3)]
    with pytest.raises(ValueError):  # one order per seed
        runner.run(11, spec, tmp_path / "trial_11", seeds=[0, 1], order_seeds=[0])
