"""The learning curve (`xvol_lab.tasks.curve`): where it is evaluated, its area, that measuring it
leaves the training run unchanged, and that a run reports the area of the whole run."""

from __future__ import annotations

import csv

import pytest
import torch

from xvol_lab.tasks import fit
from xvol_lab.tasks.callbacks import EpochHistory
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.curve import LearningCurve, area, curve_steps
from xvol_lab.tasks.metrics import VAL_ACC1, VAL_ACC1_AUC, VAL_LOSS

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NUM_VAL = 64


def test_curve_steps_are_evenly_spaced_and_end_the_epoch():
    assert curve_steps(63, 4) == {15, 31, 46, 62}  # the shipped 4000 images in batches of 64
    assert curve_steps(8, 8) == set(range(8))
    assert curve_steps(3, 6) == {0, 1, 2}  # more points than batches: once after each batch


def test_area_is_zero_at_chance_one_when_perfect_and_the_mean_between():
    assert area([0.5, 0.5, 0.5], 0.5) == 0.0
    assert area([1.0, 1.0], 0.25) == 1.0
    assert area([0.5, 1.0, 1.0, 0.75], 0.5) == pytest.approx((0 + 1 + 1 + 0.5) / 4)
    assert area([0.4], 0.5) == pytest.approx(-0.2)  # below chance stays visible


def test_history_reports_run_metrics_of_the_last_epoch_and_the_rest_of_the_best():
    history = EpochHistory(VAL_ACC1, "max")
    history.history = [{"epoch": 0.0, VAL_ACC1: 0.5, VAL_ACC1_AUC: 0.1},
                       {"epoch": 1.0, VAL_ACC1: 1.0, VAL_ACC1_AUC: 0.4},
                       {"epoch": 2.0, VAL_ACC1: 1.0, VAL_ACC1_AUC: 0.6}]
    assert history.best() == {VAL_ACC1: 1.0, VAL_ACC1_AUC: 0.6, "best_epoch": 2.0}


def _config(root, *overrides: str):
    return load_run_config(None, [
        f"data.root={root}", "data.image_size=16", "data.num_classes=4", "data.num_train=256",
        f"data.num_val={NUM_VAL}", "data.batch_size=32", "data.num_workers=0", "model.width_mult=0.125",
        "optim.name=adamw", "optim.lr=0.003", "trainer.accelerator=cpu", "trainer.max_epochs=2", *overrides])


@pytest.mark.slow
def test_curve_leaves_the_run_unchanged_and_its_epoch_end_points_equal_val_acc1(tmp_path):
    plain = fit(_config(tmp_path / "data"), tmp_path / "plain", progress=False)
    curve = LearningCurve(points=4, images=NUM_VAL)  # the whole validation set: comparable with val/acc1
    measured = fit(_config(tmp_path / "data"), tmp_path / "curve", callbacks=[curve], progress=False)
    assert measured[VAL_LOSS] == plain[VAL_LOSS] and measured[VAL_ACC1] == plain[VAL_ACC1]
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for d in (tmp_path / "plain", tmp_path / "curve")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=0)
    assert len(curve.accuracies) == 2 * 4  # 8 batches per epoch, 4 points each
    assert curve.accuracies[3] == pytest.approx(float(_epoch_acc1(tmp_path / "curve", 1)), abs=1e-6)
    assert curve.accuracies[7] == pytest.approx(float(_epoch_acc1(tmp_path / "curve", 2)), abs=1e-6)
    assert measured[VAL_ACC1_AUC] == pytest.approx(area(curve.accuracies, 0.25), abs=1e-6)


@pytest.mark.slow
def test_config_switches_the_curve_on_and_a_resumed_run_keeps_the_points(tmp_path):
    on = ("trainer.curve_points=2", "trainer.curve_images=40")
    first = fit(_config(tmp_path / "data", *on, "trainer.max_epochs=1"), tmp_path / "run", progress=False)
    before = _points(tmp_path / "run")
    assert len(before) == 2 and all(p * 40 == round(p * 40) for p in before)  # 40 images per point
    assert first[VAL_ACC1_AUC] == pytest.approx(area(before, 0.25), abs=1e-6)
    resumed = fit(_config(tmp_path / "data", *on), tmp_path / "run", progress=False, resume="last")
    after = _points(tmp_path / "run")
    assert len(after) == 4 and after[:2] == before
    assert resumed[VAL_ACC1_AUC] == pytest.approx(area(after, 0.25), abs=1e-6)


def _points(run_dir) -> list[float]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    return next(v["accuracies"] for k, v in state.items() if k.startswith("LearningCurve"))


def _epoch_acc1(run_dir, epoch: int) -> str:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return next(r[VAL_ACC1] for r in csv.DictReader(f) if r.get(VAL_ACC1) and int(r["epoch"]) == epoch)
