"""Image classifier: backbone + global average pool + linear layer (torchvision's ResNet head).

The pool is a mean over the spatial dimensions rather than `nn.AdaptiveAvgPool2d(1)`: the same
numbers, and its backward has a deterministic CUDA kernel (AdaptiveAvgPool2d's does not, so
``torch.use_deterministic_algorithms(True)`` would raise at the first backward)."""

from __future__ import annotations

from torch import Tensor, nn

from xvol_lab.models.backbone import Backbone
from xvol_lab.models.spec import BackboneSpec
from xvol_lab.schema import is_int


class Classifier(nn.Module):
    """``fc(backbone(x).mean((2, 3)))``: logits (B, num_classes)."""

    def __init__(self, spec: BackboneSpec, num_classes: int, *, deploy: bool = False,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        if not is_int(num_classes) or num_classes < 1:
            raise ValueError(f"num_classes: got {num_classes!r}, expected a positive integer")
        self.spec = spec
        self.num_classes = num_classes
        self.backbone = Backbone(spec, deploy=deploy, zero_init_residual=zero_init_residual)
        self.fc = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x).mean((2, 3)))  # global average pool: (B, C)


def build_classifier(spec: BackboneSpec, num_classes: int, *, deploy: bool = False,
                     zero_init_residual: bool = False) -> Classifier:
    """The classifier for `spec`; ``deploy=True`` builds deploy-form operators (to load a deployed state)."""
    return Classifier(spec, num_classes, deploy=deploy, zero_init_residual=zero_init_residual)
