"""Faster R-CNN and Mask R-CNN (torchvision's, wrapped) over a backbone built from a `BackboneSpec`.

The backbone's four stage maps feed torchvision's `BackboneWithFPN` (FPN + max-pool level), whose
``in_channels_list`` is read from ``backbone.feature_info``. Everything after the FPN (anchors, RPN,
RoI heads, resizing and normalisation of the input) is torchvision's, configured by `DetectorConfig`.
`xvol_lab.reparameterize(detector)` converts the backbone's operators like any other module.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from xvol_lab.models.backbone import Backbone, build_backbone
from xvol_lab.models.spec import BackboneSpec
from xvol_lab.schema import is_int

# Backbone parts from the last stage back, as torchvision's `trainable_layers` counts them.
TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "stem")
ASPECT_RATIOS = (0.5, 1.0, 2.0)
REPRESENTATION_SIZE = 1024  # torchvision's TwoMLPHead width


def _positive_int(name: str, value: object) -> None:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name}: got {value!r}, expected an integer >= 1")


@dataclass(frozen=True)
class DetectorConfig:
    """The detector around the backbone; every default is torchvision's `maskrcnn_resnet50_fpn`.

    `min_size`/`max_size`: torchvision resizes each image so its short side is `min_size` unless the
    long side would exceed `max_size`. `trainable_stages` (0-5) counts backbone parts left trainable
    from layer4 back to the stem (torchvision's ``trainable_layers``); frozen parts get no gradient
    and keep their BatchNorms in eval mode. `anchor_sizes`: one anchor size (pixels) per FPN level
    (strides 4, 8, 16, 32, 64), each with aspect ratios 0.5, 1, 2. `fpn_channels` is also the width
    of the mask head (both 256 in torchvision). The `rpn_*` and `box_*` fields are passed to
    torchvision's `FasterRCNN` under the same names.
    """

    min_size: int = 800
    max_size: int = 1333
    trainable_stages: int = 5
    anchor_sizes: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)
    fpn_channels: int = 256
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    box_detections_per_img: int = 100
    box_score_thresh: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.anchor_sizes, list):
            object.__setattr__(self, "anchor_sizes", tuple(self.anchor_sizes))
        for f in dataclasses.fields(self):
            if f.name not in ("trainable_stages", "anchor_sizes", "box_score_thresh"):
                _positive_int(f.name, getattr(self, f.name))
        if self.max_size < self.min_size:
            raise ValueError(f"max_size: got {self.max_size}, expected at least min_size ({self.min_size})")
        stages = self.trainable_stages
        if not is_int(stages) or not 0 <= stages <= 5:
            raise ValueError(f"trainable_stages: got {stages!r}, expected an integer in 0..5")
        sizes = self.anchor_sizes
        if (not isinstance(sizes, tuple) or len(sizes) != 5
                or any(not is_int(s) or s < 1 for s in sizes)):
            raise ValueError(f"anchor_sizes: got {sizes!r}, expected 5 integers >= 1 (one per FPN level)")
        if not 0.0 <= self.box_score_thresh < 1.0:
            raise ValueError(f"box_score_thresh: got {self.box_score_thresh!r}, expected a number in [0, 1)")


class BackboneFPN(BackboneWithFPN):
    """`BackboneWithFPN` over `Backbone`: ``body`` returns the stage maps '0'..'3' (layer1..layer4),
    ``fpn`` adds a max-pooled level 'pool'. Parts outside the `trainable_stages` last ones are frozen:
    no gradient, and their BatchNorms stay in eval mode whatever ``train()`` is called with."""

    def __init__(self, backbone: Backbone, *, trainable_stages: int, out_channels: int) -> None:
        info = backbone.feature_info
        super().__init__(backbone, return_layers={str(f["module"]): str(i) for i, f in enumerate(info)},
                         in_channels_list=[int(f["num_chs"]) for f in info], out_channels=out_channels)
        self.feature_info = info
        self.frozen = TRAINABLE_ORDER[trainable_stages:]
        for name in self.frozen:
            self.body[name].requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> BackboneFPN:
        super().train(mode)
        for name in self.frozen:
            self.body[name].eval()
        return self


def build_detector(spec: BackboneSpec, num_classes: int, cfg: DetectorConfig | None = None, *, masks: bool,
                   deploy: bool = False) -> FasterRCNN:
    """Faster R-CNN, or Mask R-CNN when `masks`, over the backbone of `spec`, configured by `cfg`
    (default: torchvision's `maskrcnn_resnet50_fpn` settings).

    `num_classes` counts object classes; the detector predicts ``num_classes + 1`` (label 0 is the
    background, as in torchvision). ``deploy=True`` builds deploy-form operators (to load a
    re-parameterized state dict).
    """
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes: got {num_classes!r}, expected a positive integer")
    cfg = DetectorConfig() if cfg is None else cfg
    body = BackboneFPN(build_backbone(spec, deploy=deploy), trainable_stages=cfg.trainable_stages,
                       out_channels=cfg.fpn_channels)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in cfg.anchor_sizes),
                              aspect_ratios=(ASPECT_RATIOS,) * len(cfg.anchor_sizes))
    rcnn = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name.startswith(("rpn_", "box_"))}
    box_predictor = FastRCNNPredictor(REPRESENTATION_SIZE, num_classes + 1)
    common: dict[str, Any] = dict(min_size=cfg.min_size, max_size=cfg.max_size, rpn_anchor_generator=anchors,
                                  box_predictor=box_predictor, **rcnn)
    if not masks:
        return FasterRCNN(body, **common)
    width = cfg.fpn_channels
    return MaskRCNN(body, mask_head=MaskRCNNHeads(width, (width,) * 4, 1),
                    mask_predictor=MaskRCNNPredictor(width, width, num_classes + 1), **common)


def from_torchvision_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of torchvision's ``{faster,mask}rcnn_resnet50_fpn`` (or any detector on its
    ResNet) with the keys of `build_detector` for the all-conv spec of the same ResNet: the stem's
    conv1/bn1 become ``stem.conv``/``stem.bn`` and each block's 3x3 conv + BatchNorm its 'conv'
    operator (op2, and op1 in basic blocks). Other keys are unchanged."""
    bottleneck = any(re.search(r"\.layer\d\.\d+\.conv3\.", k) for k in state_dict)
    ops = {"conv2": "op2.conv", "bn2": "op2.bn"}
    if not bottleneck:
        ops |= {"conv1": "op1.conv", "bn1": "op1.bn"}
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^backbone\.body\.(conv1|bn1)\.",
                     lambda m: f"backbone.body.stem.{m[1][:-1]}.", key)
        key = re.sub(r"^(backbone\.body\.layer\d\.\d+\.)(conv1|bn1|conv2|bn2)\.",
                     lambda m: f"{m[1]}{ops.get(m[2], m[2])}.", key)
        out[key] = value
    return out


__all__ = ["BackboneFPN", "DetectorConfig", "build_detector", "from_torchvision_keys"]
