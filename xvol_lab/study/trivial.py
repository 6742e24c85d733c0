"""The trivial level of a study's objectives: what a network that learned nothing scores.

Reports show it beside the baseline, so that "all-conv 0.11 mIoU" reads as "barely above
predicting background everywhere". Per metric:

- ``val/acc1`` (``val/acc5``): always predicting the most frequent validation class (its five most
  frequent). The generated classification sets are balanced (image i has label i mod K), so this
  is ceil(V / K) / V, i.e. chance 1 / K; other datasets are counted from their validation labels.
- ``val/acc1_auc``: 0, by construction (the area under the learning curve rescales chance to 0).
- ``val/miou``, ``val/pixel_acc``: predicting background (label 0) for every pixel, scored by the
  task's own metric (`segmentation_metrics`) on the validation masks as the network sees them.
  With IoU averaged over the classes present in prediction or target, that is the background IoU
  divided by one plus the number of shape classes present.
- ``val/box_ap*``, ``val/mask_ap*``: 0. A detector that returns nothing scores 0, and an untrained
  one scores 0 to three decimals (measured on the shipped detection study: studies/README.md).

Objectives measured on the deploy network (``latency_ms``, ``params_m``, ...) and losses have no
trivial level and are left out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch

from xvol_lab.data import build_datamodule
from xvol_lab.data.config import BALANCED_NAMES, DataConfig
from xvol_lab.study.config import StudyConfig
from xvol_lab.tasks.metrics import (
    VAL_ACC1,
    VAL_ACC1_AUC,
    VAL_ACC5,
    VAL_BOX_AP,
    VAL_BOX_AP50,
    VAL_BOX_AP75,
    VAL_MASK_AP,
    VAL_MASK_AP50,
    VAL_MIOU,
    VAL_PIXEL_ACC,
)
from xvol_lab.tasks.registry import Trivial, task_record

DETECTION_METRICS = (VAL_BOX_AP, VAL_BOX_AP50, VAL_BOX_AP75, VAL_MASK_AP, VAL_MASK_AP50)


def trivial_level(config: StudyConfig) -> dict[str, float]:
    """Each objective of `config` that has a trivial level -> that level (see the module docstring);
    which one is the task's (`TaskRecord.trivial`).

    Segmentation studies generate their dataset if needed and read the validation masks once."""
    names, scores = _LEVELS[task_record(config.task).trivial]
    wanted = [name for name in config.metric_names if name in names]
    if not wanted:
        return {}
    levels = scores(config.base.data)
    return {name: levels[name] for name in wanted}


def majority_class_scores(data: DataConfig) -> dict[str, float]:
    """`val/acc1` and `val/acc5` of always predicting the most frequent validation classes of `data`."""
    counts = sorted(_val_label_counts(data).values(), reverse=True)
    total = sum(counts)
    return {VAL_ACC1: sum(counts[:1]) / total, VAL_ACC5: sum(counts[:5]) / total}


def _classification_levels(data: DataConfig) -> dict[str, float]:
    """The majority class's accuracies; `val/acc1_auc` rescales chance to 0, so its level is 0."""
    return {**majority_class_scores(data), VAL_ACC1_AUC: 0.0}


def _val_label_counts(data: DataConfig) -> Counter[int]:
    """How many validation images each class has."""
    if data.name in BALANCED_NAMES:  # label = index mod K
        k, v = data.num_classes, data.num_val
        return Counter({c: math.ceil((v - c) / k) for c in range(k)})
    datamodule = build_datamodule(data)
    datamodule.prepare_data()
    datamodule.setup("validate")
    return Counter(int(t) for t in datamodule.val_set.targets)  # every classification val set has them


def all_background_scores(data: DataConfig) -> dict[str, float]:
    """`val/miou` and `val/pixel_acc` of predicting background everywhere on `data`'s validation set."""
    from xvol_lab.tasks.segmentation import segmentation_metrics  # late: tasks import lightning

    datamodule = build_datamodule(data)
    datamodule.prepare_data()
    datamodule.setup("validate")
    metrics = segmentation_metrics(datamodule.num_classes)
    for _, mask in datamodule.val_set:
        logits = torch.zeros(1, datamodule.num_classes, *mask.shape)
        logits[:, 0] = 1.0  # background wins every pixel
        metrics.update(logits, mask[None])
    return {name: float(value) for name, value in metrics.compute().items()}


def _nothing_detected(data: DataConfig) -> dict[str, float]:
    return dict.fromkeys(DETECTION_METRICS, 0.0)


# TaskRecord.trivial -> (the metrics it gives a level, their levels on a dataset)
_LEVELS: dict[Trivial, tuple[tuple[str, ...], Callable[[DataConfig], dict[str, float]]]] = {
    "majority_class": ((VAL_ACC1, VAL_ACC5, VAL_ACC1_AUC), _classification_levels),
    "all_background": ((VAL_MIOU, VAL_PIXEL_ACC), all_background_scores),
    "zero": (DETECTION_METRICS, _nothing_detected),
}
