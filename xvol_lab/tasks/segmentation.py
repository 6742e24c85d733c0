"""`SegmentationTask`: a `SemanticFPN` built from a spec, trained with per-pixel cross-entropy."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from xvol_lab.data.segmentation import IGNORE_INDEX
from xvol_lab.models import BackboneSpec
from xvol_lab.models.semantic_fpn import build_semantic_fpn
from xvol_lab.schema import from_dict
from xvol_lab.tasks.base import TaskModule
from xvol_lab.tasks.config import OptimConfig
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
    as the optimiser config says) and per epoch ``val/loss`` (plain cross-entropy averaged over every
    labelled pixel), ``val/miou`` and ``val/pixel_acc`` over the whole validation set (every image
    once, across processes, whatever the batching); pixels labelled 255 count nowhere. A NaN or
    infinite training loss raises `NonFiniteLossError` on every process (`TaskModule`).
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
        # val/loss = summed cross-entropy / labelled pixels, both summed on the device and across processes
        self.val_loss_sum = SumMetric(nan_strategy="disable")
        self.val_pixels = SumMetric(nan_strategy="disable")

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
        self.val_loss_sum.update(F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum"))
        self.val_pixels.update((masks != IGNORE_INDEX).sum())
        self.val_metrics.update(logits, masks)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.log(VAL_LOSS, self.val_loss_sum.compute() / self.val_pixels.compute(), prog_bar=True)
        self.val_loss_sum.reset()
        self.val_pixels.reset()



__all__ = ["VAL_MIOU", "VAL_PIXEL_ACC", "SegmentationTask", "segmentation_metrics"]
