"""Task registry: the LightningModule of each `RunConfig.task`, and its bare network (for cost/latency)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import nn

from xvol_lab.models import build_classifier
from xvol_lab.models.detection import build_detector
from xvol_lab.models.semantic_fpn import build_semantic_fpn
from xvol_lab.schema import to_dict
from xvol_lab.tasks.classification import ClassificationTask
from xvol_lab.tasks.config import RunConfig
from xvol_lab.tasks.detection import DetectionTask
from xvol_lab.tasks.segmentation import SegmentationTask

DETECTION_TASKS = ("detection", "instance_segmentation")


def build_task(config: RunConfig, num_classes: int) -> L.LightningModule:
    """The LightningModule that trains `config.task` with `num_classes` classes."""
    spec, optim = to_dict(config.model), to_dict(config.optim)
    if config.task == "classification":
        return ClassificationTask(spec, num_classes, optim)
    if config.task == "semantic_segmentation":
        return SegmentationTask(spec, num_classes, optim)
    return DetectionTask(spec, num_classes, optim, to_dict(config.detector),
                         masks=config.task == "instance_segmentation")


def build_network(config: RunConfig, num_classes: int, *, deploy: bool = False) -> nn.Module:
    """The task's network alone (no loss, no metrics), in train or deploy form."""
    if config.task == "classification":
        return build_classifier(config.model, num_classes, deploy=deploy)
    if config.task == "semantic_segmentation":
        return build_semantic_fpn(config.model, num_classes, deploy=deploy)
    return build_detector(config.model, num_classes, masks=config.task == "instance_segmentation",
                          deploy=deploy, **to_dict(config.detector))


def example_inputs(config: RunConfig, batch_size: int, device: torch.device | str = "cpu") -> Any:
    """A batch the network of `config` takes in eval mode: a tensor, or a list of images for detectors."""
    size = config.data.image_size
    images = torch.rand(batch_size, config.model.in_chans, size, size, device=device)
    return list(images) if config.task in DETECTION_TASKS else images
