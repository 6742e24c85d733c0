"""Metric names shared by the tasks (which log them) and the study/report code (which reads them)."""

from __future__ import annotations

import math

TRAIN_LOSS = "train/loss"
TRAIN_ACC1 = "train/acc1"
VAL_LOSS = "val/loss"
VAL_ACC1 = "val/acc1"
VAL_ACC5 = "val/acc5"
# area under the validation accuracy curve, chance 0 .. perfect 1 (xvol_lab.tasks.curve)
VAL_ACC1_AUC = "val/acc1_auc"
VAL_MIOU = "val/miou"
VAL_PIXEL_ACC = "val/pixel_acc"
VAL_BOX_AP = "val/box_ap"
VAL_BOX_AP50 = "val/box_ap50"
VAL_BOX_AP75 = "val/box_ap75"
VAL_MASK_AP = "val/mask_ap"
VAL_MASK_AP50 = "val/mask_ap50"

# metrics of the whole run so far rather than of one epoch: a run reports their last value, not the
# best epoch's
RUN_METRICS: frozenset[str] = frozenset({VAL_ACC1_AUC})

# The values each metric can take (low, high): reports keep intervals inside it and place a baseline
# in it (`lab.py study calibrate`: its position as a fraction of high - low). val/acc1_auc is 0 at
# chance and 1 when perfect from the first point (below chance it is slightly negative).
RANGES: dict[str, tuple[float, float]] = {
    TRAIN_LOSS: (0.0, math.inf), VAL_LOSS: (0.0, math.inf),
    **{name: (0.0, 1.0) for name in (TRAIN_ACC1, VAL_ACC1, VAL_ACC1_AUC, VAL_ACC5, VAL_MIOU, VAL_PIXEL_ACC,
                                     VAL_BOX_AP, VAL_BOX_AP50, VAL_BOX_AP75, VAL_MASK_AP, VAL_MASK_AP50)},
}

__all__ = ["RANGES", "RUN_METRICS", "TRAIN_ACC1", "TRAIN_LOSS", "VAL_ACC1", "VAL_ACC1_AUC", "VAL_ACC5",
           "VAL_BOX_AP", "VAL_BOX_AP50", "VAL_BOX_AP75", "VAL_LOSS", "VAL_MASK_AP", "VAL_MASK_AP50", "VAL_MIOU",
           "VAL_PIXEL_ACC"]
