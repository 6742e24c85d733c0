"""The `one_shot` section of a study file (with ``search: one_shot``): supernet training, the search
over its paths, and the stand-alone check (`xvol_lab.study.one_shot`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class OneShotConfig:
    """`epochs` of supernet training (one path per step, drawn uniformly by `sampling`: ``space``
    over the study space's points, ``product`` over every combination of the stages' candidates, so
    that each candidate of a stage is trained equally often); then
    `paths` Optuna trials over the trained supernet (every point once when the space has no more;
    `sampler` tpe: accuracy, nsga2: accuracy and FLOPs), each scored on the first `val_images`
    validation images after recalibrating BatchNorm on `bn_batches` training batches by `score`
    (acc1: top-1 accuracy; nll: minus the mean cross-entropy, graded where accuracy saturates; auc: top-1
    accuracy with the weights of every supernet epoch, rescaled from chance to perfect and averaged,
    the one-shot analogue of val/acc1_auc; `xvol_lab.tasks.supernet_score`); then the
    `top_k` best paths and `random_k` others drawn at random are trained stand-alone as the
    study's ordinary trials (budget.seeds seeds, budget.epochs epochs each)."""

    epochs: int = 3
    sampling: Literal["space", "product"] = "product"
    paths: int = 200
    sampler: Literal["tpe", "nsga2"] = "tpe"
    score: Literal["acc1", "nll", "auc"] = "acc1"
    bn_batches: int = 4
    val_images: int = 500
    top_k: int = 3
    random_k: int = 3

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("paths", 1), ("bn_batches", 1), ("val_images", 1), ("top_k", 1),
                          ("random_k", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: got {getattr(self, name)}, expected an integer >= {low}")

    @property
    def k(self) -> int:
        """Paths trained stand-alone."""
        return self.top_k + self.random_k
