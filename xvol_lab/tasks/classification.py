"""`ClassificationTask`: a `Classifier` built from a spec, trained with cross-entropy."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.schema import from_dict
from xvol_lab.tasks.base import TaskModule, batch_mean, per_sample
from xvol_lab.tasks.config import OptimConfig
from xvol_lab.tasks.metrics import VAL_LOSS


def accuracy_metrics(num_classes: int, split: str, *, validate_args: bool = True) -> MetricCollection:
    """``<split>/acc1`` and ``<split>/acc5`` (top-k clipped to `num_classes`), micro-averaged.
    ``validate_args=False`` skips the input checks, which read the device on every update."""
    def top(k: int) -> MulticlassAccuracy:
        return MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro",
                                  validate_args=validate_args)
    return MetricCollection({"acc1": top(1), "acc5": top(5)}, prefix=f"{split}/")


class ClassificationTask(TaskModule):
    """Image classification with the `Classifier` of `spec` (a `BackboneSpec` as a dict).

    The constructor arguments are saved as hyper-parameters, so ``load_from_checkpoint`` rebuilds
    the exact architecture. Logs ``train/loss`` (label-smoothed, averaged over processes),
    ``train/acc1``, ``train/acc5``, and per epoch ``val/loss`` (plain cross-entropy), ``val/acc1``
    and ``val/acc5``, over the whole validation set (every image once, across processes).
    A NaN or infinite training loss raises `NonFiniteLossError` on every process (`TaskModule`).
    """

    def __init__(self, spec: dict[str, Any], num_classes: int, optim: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = from_dict(BackboneSpec, spec)
        self.optim_config = from_dict(OptimConfig, optim or {})
        self.model = build_classifier(self.spec, num_classes)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.optim_config.label_smoothing)
        self.train_metrics = accuracy_metrics(num_classes, "train", validate_args=False)
        self.val_metrics = accuracy_metrics(num_classes, "val")
        self.val_loss = batch_mean()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self.model(self.images_in(images))
        loss = self.criterion(logits, labels)
        self.log_train_losses([loss], batch_size=len(labels))
        self.train_metrics.update(logits.detach(), labels)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self.model(self.images_in(images))
        self.val_loss.update(per_sample(F.cross_entropy(logits, labels), len(labels)))
        self.log(VAL_LOSS, self.val_loss, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.val_metrics.update(logits, labels)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)

