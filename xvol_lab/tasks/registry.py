"""The tasks: one frozen `TaskRecord` per `RunConfig.task`, the only place that knows what a task is.

A record names the task's LightningModule and its bare network, the datasets it reads, the config
defaults a first run starts from, the metric that picks the best epoch and trial, what its network
returns (`Output`: which decides how exports are checked and predictions written), and the trivial
level its study baselines are compared with. Adding a task means adding one record to `TASKS` and its
LightningModule (a module of this package); the rest of the lab asks `task_record(name)`.

The LightningModule is imported on first use (`TaskRecord.lightning_module`): reading a run or study
config imports this module, and must not import Lightning.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.models.detection import DetectorConfig, build_detector
from xvol_lab.models.semantic_fpn import build_semantic_fpn
from xvol_lab.schema import to_dict
from xvol_lab.tasks.metrics import VAL_ACC1, VAL_BOX_AP, VAL_MASK_AP, VAL_MIOU

if TYPE_CHECKING:
    import lightning.pytorch as L

Task = Literal["classification", "semantic_segmentation", "detection", "instance_segmentation"]
# What a task's network returns: logits per image ("labels"), logits per pixel ("pixels"), or, from a
# list of images, a list of detections per image ("instances": boxes, labels, scores, maybe masks).
Output = Literal["labels", "pixels", "instances"]
# The score of a model that ignores its input (`xvol_lab.study.trivial`): the majority class, background
# everywhere, or nothing detected.
Trivial = Literal["majority_class", "all_background", "zero"]

# (spec, num_classes, detector, deploy) -> the bare network; the detector config is read by detectors only
Network = Callable[[BackboneSpec, int, DetectorConfig, bool], nn.Module]


def _classifier(spec: BackboneSpec, num_classes: int, detector: DetectorConfig, deploy: bool) -> nn.Module:
    return build_classifier(spec, num_classes, deploy=deploy)


def _semantic_fpn(spec: BackboneSpec, num_classes: int, detector: DetectorConfig, deploy: bool) -> nn.Module:
    return build_semantic_fpn(spec, num_classes, deploy=deploy)


def _faster_rcnn(spec: BackboneSpec, num_classes: int, detector: DetectorConfig, deploy: bool) -> nn.Module:
    return build_detector(spec, num_classes, detector, masks=False, deploy=deploy)


def _mask_rcnn(spec: BackboneSpec, num_classes: int, detector: DetectorConfig, deploy: bool) -> nn.Module:
    return build_detector(spec, num_classes, detector, masks=True, deploy=deploy)


def _no_options(detector: DetectorConfig) -> dict[str, Any]:
    return {}


def _faster_rcnn_options(detector: DetectorConfig) -> dict[str, Any]:
    return {"detector": to_dict(detector), "masks": False}


def _mask_rcnn_options(detector: DetectorConfig) -> dict[str, Any]:
    return {"detector": to_dict(detector), "masks": True}


@dataclass(frozen=True)
class TaskRecord:
    """Everything the lab knows about one task (see the module docstring)."""

    name: str
    module: str  # "<module of xvol_lab.tasks>.<LightningModule>", imported on first use
    network: Network
    datasets: tuple[str, ...]
    monitor: str  # the metric that picks the best epoch (checkpoint) and ranks trials; higher is better
    output: Output
    trivial: Trivial
    onnx_io: str  # the exported ONNX model's inputs and outputs, for the model card ({c}: channels, {s}: size)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # config sections merged over RunConfig's
    # keyword arguments of the LightningModule beyond (spec, num_classes, optim), as its hyper-parameters
    module_options: Callable[[DetectorConfig], dict[str, Any]] = _no_options
    instance_masks: bool = False  # instances come with masks (Mask R-CNN)
    mode: Literal["max", "min"] = "max"

    @property
    def takes_image_lists(self) -> bool:
        """The network takes a list of images of any sizes (detectors), not a batch tensor."""
        return self.output == "instances"

    @property
    def dense(self) -> bool:
        """A few large images per GPU: batch statistics are shared across processes (SyncBatchNorm)."""
        return self.output != "labels"

    def lightning_module(self) -> type[L.LightningModule]:
        """The LightningModule class (imports Lightning)."""
        module, name = self.module.rsplit(".", 1)
        return getattr(importlib.import_module(f"xvol_lab.tasks.{module}"), name)

    def build_module(self, spec: BackboneSpec, num_classes: int, optim: Mapping[str, Any],
                     detector: DetectorConfig) -> L.LightningModule:
        """The LightningModule that trains `spec` with `num_classes` classes and the `optim` settings (an
        `OptimConfig` as a dict). Its constructor takes plain dicts: its hyper-parameters, which every
        checkpoint saves and `load_from_checkpoint` passes back."""
        return self.lightning_module()(to_dict(spec), num_classes, dict(optim), **self.module_options(detector))

    def build_network(self, spec: BackboneSpec, num_classes: int, detector: DetectorConfig, *,
                      deploy: bool = False) -> nn.Module:
        """The task's network alone (no loss, no metrics), in train or deploy form."""
        return self.network(spec, num_classes, detector, deploy)


# What a run of each task starts from before a config file and --set: sizes a first run finishes in
# about a minute on a 2-core CPU. The detectors get the studies' 64 px imagenet-stem detector (a small
# stem would make their maps 16x larger).
QUICK_DETECTOR: Mapping[str, Any] = MappingProxyType({
    "data": {"name": "shapes-coco", "image_size": 64, "num_train": 128, "num_val": 32, "num_classes": 4,
             "batch_size": 8},
    "model": {"stem": "imagenet"},
    "detector": {"min_size": 64, "max_size": 64, "anchor_sizes": [8, 16, 32, 64, 128], "fpn_channels": 64,
                 "rpn_pre_nms_top_n_train": 256, "rpn_post_nms_top_n_train": 128,
                 "rpn_pre_nms_top_n_test": 256, "rpn_post_nms_top_n_test": 128,
                 "box_batch_size_per_image": 128, "box_detections_per_img": 20},
    "optim": {"lr": 0.02, "weight_decay": 0.0001},
    "trainer": {"max_epochs": 2, "gradient_clip_val": 10.0},
})
_IMAGES_IO = "input `images` (N, {c}, {s}, {s}) normalised like the validation data, output `logits`"
_IMAGE_IO = "input `image` ({c}, {s}, {s}) in [0, 1], one per call, outputs `boxes` (xyxy), `labels`, `scores`"

TASKS: Mapping[str, TaskRecord] = MappingProxyType({record.name: record for record in (
    TaskRecord("classification", "classification.ClassificationTask", _classifier,
               datasets=("shapes", "shapes-context", "shapes-side", "imagefolder", "cifar10"), monitor=VAL_ACC1,
               output="labels", trivial="majority_class", onnx_io=_IMAGES_IO),
    TaskRecord("semantic_segmentation", "segmentation.SegmentationTask", _semantic_fpn,
               datasets=("shapes-seg", "masks"), monitor=VAL_MIOU, output="pixels", trivial="all_background",
               onnx_io=_IMAGES_IO + " (N, classes, {s}, {s})",
               defaults={"data": {"name": "shapes-seg", "num_train": 500, "num_val": 100, "num_classes": 4},
                         "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.01},
                         "trainer": {"max_epochs": 3}}),
    TaskRecord("detection", "detection.DetectionTask", _faster_rcnn, datasets=("shapes-coco", "coco"),
               monitor=VAL_BOX_AP, output="instances", trivial="zero", onnx_io=_IMAGE_IO,
               defaults=QUICK_DETECTOR, module_options=_faster_rcnn_options),
    TaskRecord("instance_segmentation", "detection.DetectionTask", _mask_rcnn, datasets=("shapes-coco", "coco"),
               monitor=VAL_MASK_AP, output="instances", trivial="zero",
               onnx_io=_IMAGE_IO + ", `masks` (K, 1, {s}, {s})", defaults=QUICK_DETECTOR,
               module_options=_mask_rcnn_options, instance_masks=True),
)})
DEFAULT_TASK: Task = "classification"
# task -> (the metric that picks the best epoch / trial, and whether higher or lower is better)
MONITOR: Mapping[str, tuple[str, Literal["max", "min"]]] = MappingProxyType(
    {name: (record.monitor, record.mode) for name, record in TASKS.items()})


def task_record(name: str) -> TaskRecord:
    """The record of task `name` (a `RunConfig.task`, validated there)."""
    return TASKS[name]
