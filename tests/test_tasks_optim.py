"""The optimiser pieces without training: LR schedule values, weight decay, label smoothing,
top-k accuracy, and the metric each task is judged by."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from torch import nn

from xvol_lab.models import BackboneSpec
from xvol_lab.schema import to_dict
from xvol_lab.tasks import MONITOR, VAL_ACC1, VAL_ACC5
from xvol_lab.tasks.classification import ClassificationTask, accuracy_metrics
from xvol_lab.tasks.coco_eval import evaluate
from xvol_lab.tasks.config import OptimConfig, Task
from xvol_lab.tasks.optim import build_optimizer, build_scheduler, lr_factor
from xvol_lab.tasks.segmentation import segmentation_metrics

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
    # 10 steps over 5 epochs: 2 steps per epoch, 1 warmup epoch = 2 steps (linear), then torch's own
    # cosine annealing over the other 8
    lrs = lrs_of(OptimConfig(lr=0.1, warmup_epochs=1, schedule="cosine"), 10, 5)
    reference = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=8)
    expected = []
    for _ in range(8):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        cosine.step()
    assert lrs == pytest.approx([0.05, 0.1, *expected])
    assert lrs[6] == pytest.approx(0.05)  # half way through the cosine
    assert lrs[9] == pytest.approx(0.0038060, abs=1e-7)  # 0.05 * (1 + cos(7 pi / 8))


def test_step_schedule_with_fractional_warmup():
    # 4 steps per epoch; warmup 0.5 epoch = 2 steps; x0.1 at epochs 1 and 2 (steps 4 and 8)
    lrs = lrs_of(OptimConfig(lr=1.0, warmup_epochs=0.5, schedule="step", step_milestones=(1, 2),
                             step_gamma=0.1), 12, 3)
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01])


def test_constant_without_warmup():
    assert lrs_of(OptimConfig(lr=0.3, warmup_epochs=0, schedule="constant"), 5, 1) == pytest.approx([0.3] * 5)
    assert lr_factor(0, warmup_steps=0, total_steps=1, schedule="cosine") == 1.0


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_shrinks_weights_but_not_batchnorm_or_biases(name):
    """One optimiser step with zero gradients moves nothing but the decay: every conv and linear
    weight of a built network shrinks by lr * weight_decay, BatchNorm parameters and biases stay."""
    task = ClassificationTask(SPEC, 10, {"name": name, "lr": 0.1, "weight_decay": 0.5, "nesterov": False})
    model = task.model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial values, so that a decay would show
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, task.optim_config)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    kept = {f"{prefix}.{n}" if prefix else n for prefix, m in model.named_modules()
            for n, _ in m.named_parameters(recurse=False)
            if isinstance(m, nn.BatchNorm2d) or n == "bias"}
    shrunk = {f"{prefix}.weight" for prefix, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert kept and shrunk and kept | shrunk == set(before)
    for n, p in model.named_parameters():
        expected = before[n] if n in kept else before[n] * (1 - 0.1 * 0.5)
        torch.testing.assert_close(p.detach(), expected, msg=n)


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


def test_every_task_logs_the_metric_that_picks_its_best_epoch():
    logged = {
        "classification": accuracy_metrics(10, "val").keys(keep_base=False),
        "semantic_segmentation": segmentation_metrics(3).keys(keep_base=False),
        "detection": evaluate(None, {}, ("bbox",)),  # no detections: every metric 0, no COCO needed
        "instance_segmentation": evaluate(None, {}, ("bbox", "segm")),
    }
    assert set(MONITOR) == set(get_args(Task)) == set(logged)
    for task, (metric, _) in MONITOR.items():
        assert metric in logged[task], (task, metric)
