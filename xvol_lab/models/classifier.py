"""Image classifier: backbone + global average pool + linear layer (torchvision's ResNet head)."""

from __future__ import annotations

from torch import Tensor, nn

from xvol_lab.models.backbone import Backbone
from xvol_lab.models.spec import BackboneSpec


class Classifier(nn.Module):
    """``fc(flatten(avgpool(backbone(x))))``: logits (B, num_classes)."""

    def __init__(self, spec: BackboneSpec, num_classes: int, *, deploy: bool = False,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: got {num_classes!r}, expected a positive integer")
        self.spec = spec
        self.num_classes = num_classes
        self.backbone = Backbone(spec, deploy=deploy, zero_init_residual=zero_init_residual)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.avgpool(self.backbone(x))))


def build_classifier(spec: BackboneSpec, num_classes: int, *, deploy: bool = False,
                     zero_init_residual: bool = False) -> Classifier:
    """The classifier for `spec`; ``deploy=True`` builds deploy-form operators (to load a deployed state)."""
    return Classifier(spec, num_classes, deploy=deploy, zero_init_residual=zero_init_residual)
