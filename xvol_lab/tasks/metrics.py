"""Metric names shared by the tasks (which log them) and the study/report code (which reads them)."""

from __future__ import annotations

from typing import Literal

TRAIN_LOSS = "train/loss"
TRAIN_ACC1 = "train/acc1"
VAL_LOSS = "val/loss"
VAL_ACC1 = "val/acc1"
VAL_ACC5 = "val/acc5"

# task -> (the metric that picks the best epoch / trial, and whether higher or lower is better)
MONITOR: dict[str, tuple[str, Literal["max", "min"]]] = {
    "classification": (VAL_ACC1, "max"),
}

__all__ = ["MONITOR", "TRAIN_ACC1", "TRAIN_LOSS", "VAL_ACC1", "VAL_ACC5", "VAL_LOSS"]
