"""`SegmentationTask`: a `SemanticFPN` built from a spec, trained with per-pixel cross-entropy."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from xvol_lab.config import OptimConfig
from xvol_lab.data.segmentation import IGNORE_INDEX
from xvol_lab.models import BackboneSpec
from xvol_lab.models.semantic_fpn import build_semantic_fpn
from xvol_lab.schema import from_dict
from xvol_lab.tasks.base import TaskModule, batch_mean, per_sample
from xvol_lab.tasks.metrics import VAL_LOSS, VAL_MIOU, VAL_PIXEL_ACC


def segmentation_metrics(num_classes: int) -> MetricCollection:
    """`VAL_MIOU` (IoU averaged over the classes present in prediction or target) and `VAL_PIXEL_ACC`;
    pixels labelled 255 are left out of both. Update with logits (B, C, H, W) and masks (B, H, W)."""
    return MetricCollection({
        VAL_MIOU: MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX),
        VAL_PIXEL_ACC: MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX),
    })


class SegmentationTask(TaskModule):
    """Semantic segmentation with the `SemanticFPN` of `spec` (a `BackboneSpec` as a dict).

    The constructor arguments are saved as hyper-parameters, so ``load_from_checkpoint`` rebuilds
    the exact architecture. Logs ``train/loss`` (cross-entropy over the labelled pixels, label-smoothed
    as the optimiser config says) and per epoch ``val/loss`` (plain cross-entropy, batches weighted
    by their images), ``val/miou`` and ``val/pixel_acc`` over the whole validation set (every image
    once, across processes); pixels labelled 255 count nowhere. A NaN or infinite training loss
    raises `NonFiniteLossError` on every process (`TaskModule`).
    """

    def __init__(self, spec: dict[str, Any], num_classes: int, optim: dict[str, Any] | None = None,
                 fpn_channels: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = from_dict(BackboneSpec, spec)
        self.optim_config = from_dict(OptimConfig, optim or {})
        self.model = build_semantic_fpn(self.spec, num_classes, fpn_channels=fpn_channels)
        self.criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX,
                                             label_smoothing=self.optim_config.label_smoothing)
        self.val_metrics = segmentation_metrics(num_classes)
        self.val_loss = batch_mean()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        loss = self.criterion(self.model(self.images_in(images)), masks)
        self.log_train_losses([loss], batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, masks = batch
        logits = self.model(self.images_in(images))  # (B, num_classes, H, W)
        loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        self.val_loss.update(per_sample(loss, len(images)))
        self.log(VAL_LOSS, self.val_loss, on_epoch=True, prog_bar=True, batch_size=len(images))
        self.val_metrics.update(logits, masks)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)



__all__ = ["VAL_MIOU", "VAL_PIXEL_ACC", "SegmentationTask", "segmentation_metrics"]
