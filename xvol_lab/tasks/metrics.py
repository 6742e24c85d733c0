"""Metric names shared by the tasks (which log them) and the study/report code (which reads them)."""

from __future__ import annotations

TRAIN_LOSS = "train/loss"
TRAIN_ACC1 = "train/acc1"
VAL_LOSS = "val/loss"
VAL_ACC1 = "val/acc1"
VAL_ACC5 = "val/acc5"
VAL_MIOU = "val/miou"
VAL_PIXEL_ACC = "val/pixel_acc"
VAL_BOX_AP = "val/box_ap"
VAL_BOX_AP50 = "val/box_ap50"
VAL_BOX_AP75 = "val/box_ap75"
VAL_MASK_AP = "val/mask_ap"
VAL_MASK_AP50 = "val/mask_ap50"

__all__ = ["TRAIN_ACC1", "TRAIN_LOSS", "VAL_ACC1", "VAL_ACC5", "VAL_BOX_AP", "VAL_BOX_AP50",
           "VAL_BOX_AP75", "VAL_LOSS", "VAL_MASK_AP", "VAL_MASK_AP50", "VAL_MIOU", "VAL_PIXEL_ACC"]
