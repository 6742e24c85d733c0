"""`LearningCurve`: validation accuracy measured several times per epoch on a fixed validation
subset, summarised as the area under that learning curve (``val/acc1_auc``).

A task that is learned at once after a seed-dependent wait (the long-range proxy: at chance, then
within a few dozen steps near 1.0) ends every run at the same accuracy ceiling; *when* the relation
was learned is what differs between networks. The area under the curve measures it: each point's
accuracy is rescaled from chance (0) to perfect (1), and the area is the mean of the points so far,
so a network that is perfect from the first point scores 1 and one that never leaves chance 0.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from xvol_lab.tasks.metrics import VAL_ACC1_AUC


def curve_steps(batches: int, points: int) -> set[int]:
    """The batch indices (0-based) of an epoch of `batches` batches after which the curve is
    evaluated: `points` evenly spaced ones, the last at the epoch's last batch."""
    return {max(0, round((k + 1) * batches / points) - 1) for k in range(points)}


def area(accuracies: list[float], chance: float) -> float:
    """Mean of `accuracies` rescaled so that `chance` is 0 and 1.0 is 1 (below chance is negative)."""
    return sum((a - chance) / (1.0 - chance) for a in accuracies) / len(accuracies)


class LearningCurve(Callback):
    """Evaluates top-1 accuracy on the first `images` validation images `points` times per epoch
    (eval mode, no gradient: the training run itself is unchanged) and logs, at each epoch's
    validation, ``val/acc1_auc``: `area` of every point so far, with chance 1 / the datamodule's `num_classes`.

    The points are kept in checkpoints, so a resumed run's area covers the epochs before the resume.
    """

    def __init__(self, points: int, images: int) -> None:
        self.points = points
        self.images = images
        self.chance = 0.0
        self.accuracies: list[float] = []
        self._subset: list[tuple[Tensor, Tensor]] = []

    def _load_subset(self, trainer: L.Trainer) -> list[tuple[Tensor, Tensor]]:
        batches: list[tuple[Tensor, Tensor]] = []
        seen = 0
        for images, labels in trainer.datamodule.val_dataloader():
            take = min(len(labels), self.images - seen)
            batches.append((images[:take], labels[:take]))
            seen += take
            if seen >= self.images:
                break
        return batches

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.chance = 1.0 / trainer.datamodule.num_classes
        self._subset = self._load_subset(trainer)

    @torch.no_grad()
    def _accuracy(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        was_training = pl_module.training
        pl_module.eval()
        correct = total = 0
        for batch in self._subset:
            batch = tuple(t.to(pl_module.device) for t in batch)
            images, labels = trainer.datamodule.on_after_batch_transfer(batch, 0)  # normalised as in validation
            logits = pl_module(pl_module.images_in(images))
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += len(labels)
        pl_module.train(was_training)
        return correct / total

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx in curve_steps(trainer.num_training_batches, self.points):
            self.accuracies.append(self._accuracy(trainer, pl_module))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self.accuracies:
            pl_module.log(VAL_ACC1_AUC, area(self.accuracies, self.chance), on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        return {"accuracies": list(self.accuracies)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.accuracies = list(state_dict["accuracies"])
