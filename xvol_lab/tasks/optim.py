"""Optimiser construction from an `OptimConfig`: parameter groups and the per-step LR schedule."""

from __future__ import annotations

import functools
import math
from bisect import bisect_right

import torch
from torch import nn

from xvol_lab.tasks.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights decay by `weight_decay`; BatchNorm parameters and biases (every 1-d
    parameter) do not. Empty groups are left out."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay},
              {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over `param_groups(model)`."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str,
              milestone_steps: tuple[int, ...] = (), gamma: float = 1.0) -> float:
    """The multiplier of the base LR used by optimiser step `step` (0-based).

    Warmup: ``(step + 1) / warmup_steps`` for the first `warmup_steps` steps. Then 'cosine'
    decays ``0.5 * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)))``;
    'step' multiplies by `gamma` once per milestone reached; 'constant' keeps 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return gamma ** bisect_right(milestone_steps, step)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int,
                    max_epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The `lr_factor` schedule for a run of `total_steps` optimiser steps over `max_epochs` epochs."""
    steps_per_epoch = total_steps / max_epochs
    factor = functools.partial(
        lr_factor,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        total_steps=total_steps,
        schedule=cfg.schedule,
        milestone_steps=tuple(round(m * steps_per_epoch) for m in cfg.step_milestones),
        gamma=cfg.step_gamma,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
