"""`DetectionTask`: Faster R-CNN (detection) or Mask R-CNN (instance segmentation) from a spec,
trained on torchvision's summed losses and scored with pycocotools' COCOeval."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from xvol_lab.data.coco import CocoInstances, Target
from xvol_lab.models import BackboneSpec
from xvol_lab.models.detection import DetectorConfig, build_detector
from xvol_lab.schema import from_dict
from xvol_lab.tasks.base import TaskModule
from xvol_lab.tasks.coco_eval import (
    VAL_BOX_AP,
    VAL_BOX_AP50,
    VAL_BOX_AP75,
    VAL_MASK_AP,
    VAL_MASK_AP50,
    ImageResults,
    broadcast_metrics,
    evaluate,
    gather_results,
    rescale_prediction,
    to_coco_results,
)
from xvol_lab.tasks.config import OptimConfig
from xvol_lab.tasks.metrics import TRAIN_LOSS

Batch = tuple[list[Tensor], list[Target]]
# The terms torchvision's Faster R-CNN returns in training (Mask R-CNN adds MASK_LOSS).
BOX_LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
MASK_LOSS = "loss_mask"


class DetectionTask(TaskModule):
    """Detection (`masks` False: Faster R-CNN) or instance segmentation (Mask R-CNN) with the
    backbone of `spec` (a `BackboneSpec` as a dict) and the detector of `detector` (a
    `DetectorConfig` as a dict); `num_classes` counts object classes, without the background.

    Training logs ``train/loss`` (the sum) and each torchvision term (``train/loss_classifier``, ...),
    epoch means over all processes; a NaN or infinite sum raises `NonFiniteLossError`. With
    `trainer.compile` the backbone and FPN are compiled, not torchvision's detection ops around
    them (data-dependent shapes: proposals, NMS, RoI Align). Validation
    expects one DataLoader over a `CocoInstances` (batches from `collate_lists`); predictions are
    mapped back to each image's ``orig_size``, converted to COCO results, gathered once per image
    across processes, scored by COCOeval on rank 0 and broadcast, then logged as ``val/box_ap``,
    ``val/box_ap50``, ``val/box_ap75`` and, with masks, ``val/mask_ap``, ``val/mask_ap50``.
    """

    def __init__(self, spec: dict[str, Any], num_classes: int, optim: dict[str, Any] | None = None,
                 detector: dict[str, Any] | None = None, masks: bool = False) -> None:
        self.terms = BOX_LOSSES + ((MASK_LOSS,) if masks else ())
        super().__init__([TRAIN_LOSS, *(f"train/{term}" for term in self.terms)])
        self.save_hyperparameters()
        self.spec = from_dict(BackboneSpec, spec)
        self.optim_config = from_dict(OptimConfig, optim or {})
        self.detector_config = from_dict(DetectorConfig, detector or {})
        self.masks = masks
        self.model = build_detector(self.spec, num_classes, self.detector_config, masks=masks)
        self.iou_types = ("bbox", "segm") if masks else ("bbox",)
        self._results: dict[int, ImageResults] = {}

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        if set(losses) != set(self.terms):
            raise RuntimeError(f"torchvision returned the losses {sorted(losses)}, "
                               f"expected {sorted(self.terms)}")
        loss = sum(losses.values())
        self.log_train_losses([loss, *(losses[term] for term in self.terms)], batch_size=len(images))
        return loss

    def compile_target(self) -> torch.nn.Module:
        return self.model.backbone

    def _val_dataset(self) -> CocoInstances:
        dataset = getattr(self.trainer.val_dataloaders, "dataset", None)
        if not isinstance(dataset, CocoInstances):
            raise TypeError(f"{type(self).__name__} validates on one DataLoader over CocoInstances, "
                            f"got {type(dataset).__name__}")
        return dataset

    def on_validation_epoch_start(self) -> None:
        self._results = {}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        category_ids = self._val_dataset().category_ids
        for image, target, prediction in zip(images, targets, self.model(images), strict=True):
            prediction = rescale_prediction(prediction, tuple(image.shape[-2:]), target["orig_size"])
            self._results[int(target["image_id"])] = to_coco_results(int(target["image_id"]), prediction,
                                                                     category_ids)

    def on_validation_epoch_end(self) -> None:
        merged = gather_results(self._results)
        self._results = {}
        metrics = None if merged is None else evaluate(self._val_dataset().coco, merged, self.iou_types)
        self.log_dict(broadcast_metrics(metrics), prog_bar=True)



__all__ = ["VAL_BOX_AP", "VAL_BOX_AP50", "VAL_BOX_AP75", "VAL_MASK_AP", "VAL_MASK_AP50",
           "DetectionTask"]
