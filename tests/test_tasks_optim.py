"""The optimiser pieces without training: LR schedule values, parameter groups, label smoothing,
top-k accuracy, and the metric names."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xvol_lab.config import OptimConfig
from xvol_lab.models import BackboneSpec
from xvol_lab.schema import to_dict
from xvol_lab.tasks import MONITOR, VAL_ACC1, VAL_ACC5, ClassificationTask
from xvol_lab.tasks.classification import accuracy_metrics
from xvol_lab.tasks.optim import build_optimizer, build_scheduler, lr_factor, param_groups

SPEC = to_dict(BackboneSpec.preset("resnet18", stem="small", width_mult=0.125))


def lrs_of(cfg: OptimConfig, total_steps: int, max_epochs: int) -> list[float]:
    """The LR used by each optimiser step (the scheduler is stepped after every optimiser step)."""
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps, max_epochs)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_then_cosine_values():
    # 10 steps over 5 epochs: 2 steps per epoch, 1 warmup epoch = 2 steps, cosine over the other 8
    lrs = lrs_of(OptimConfig(lr=0.1, warmup_epochs=1, schedule="cosine"), 10, 5)
    expected = [0.05, 0.1] + [0.05 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert lrs == pytest.approx(expected)
    assert lrs[6] == pytest.approx(0.05)  # half way through the cosine
    assert lrs[9] == pytest.approx(0.05 * (1 - math.cos(math.pi / 8)))


def test_step_schedule_with_fractional_warmup():
    # 4 steps per epoch; warmup 0.5 epoch = 2 steps; x0.1 at epochs 1 and 2 (steps 4 and 8)
    lrs = lrs_of(OptimConfig(lr=1.0, warmup_epochs=0.5, schedule="step", step_milestones=(1, 2),
                             step_gamma=0.1), 12, 3)
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01])


def test_constant_without_warmup():
    assert lrs_of(OptimConfig(lr=0.3, warmup_epochs=0, schedule="constant"), 5, 1) == pytest.approx([0.3] * 5)
    assert lr_factor(0, warmup_steps=0, total_steps=1, schedule="cosine") == 1.0


def test_no_weight_decay_on_batchnorm_and_biases():
    task = ClassificationTask(SPEC, 10, {"weight_decay": 0.05})
    groups = {g["name"]: g for g in param_groups(task.model, 0.05)}
    decay = {id(p) for p in groups["decay"]["params"]}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    for module in task.model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert {id(module.weight), id(module.bias)} <= no_decay
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert id(module.weight) in decay
            assert module.bias is None or id(module.bias) in no_decay
    assert len(decay) + len(no_decay) == len(list(task.model.parameters()))


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    cfg = OptimConfig(name=name, lr=0.02, momentum=0.8, nesterov=name == "sgd", weight_decay=1e-3)
    optimizer = build_optimizer(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), cfg)
    assert type(optimizer) is cls
    assert [(g["name"], len(g["params"]), g["weight_decay"], g["lr"]) for g in optimizer.param_groups] == \
        [("decay", 1, 1e-3, 0.02), ("no_decay", 3, 0.0, 0.02)]
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.8 and optimizer.defaults["nesterov"] is True


def test_label_smoothing_loss():
    task = ClassificationTask(SPEC, 3, {"label_smoothing": 0.3})
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp = torch.log_softmax(logits, 1)[0]
    # target: (1 - 0.3) on the label plus 0.3 / 3 on every class
    expected = -(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2])
    assert task.criterion(logits, torch.tensor([0])).item() == pytest.approx(expected.item())
    plain = ClassificationTask(SPEC, 3).criterion(logits, torch.tensor([0])).item()
    assert plain == pytest.approx(-logp[0].item())


def test_top_k_accuracy_is_clipped_to_the_classes():
    metrics = accuracy_metrics(3, "val")
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    metrics.update(logits, torch.tensor([0, 2, 0, 1]))
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values == {VAL_ACC1: pytest.approx(0.25), VAL_ACC5: 1.0}


def test_monitor_and_names():
    assert MONITOR["classification"] == (VAL_ACC1, "max")
    assert set(accuracy_metrics(10, "val").keys(keep_base=False)) == {VAL_ACC1, VAL_ACC5}
