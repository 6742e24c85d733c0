"""The ResNet backbone built from a `BackboneSpec`: stem, layer1..layer4, and their `feature_info`."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from xvol_lab.models.blocks import BLOCKS, BasicBlock, Bottleneck
from xvol_lab.models.spec import BackboneSpec


def build_stem(spec: BackboneSpec) -> tuple[nn.Sequential, int]:
    """'imagenet': 7x7/2 conv + BN + ReLU + 3x3/2 max pool (reduction 4); 'small': 3x3/1 conv + BN + ReLU."""
    width = spec.widths[0]
    if spec.stem == "imagenet":
        conv, pool = nn.Conv2d(spec.in_chans, width, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1)
    else:
        conv, pool = nn.Conv2d(spec.in_chans, width, 3, 1, 1, bias=False), None
    layers = [("conv", conv), ("bn", nn.BatchNorm2d(width)), ("relu", nn.ReLU(inplace=True))]
    if pool is not None:
        layers.append(("pool", pool))
    return nn.Sequential(OrderedDict(layers)), 4 if pool is not None else 1


def init_weights(module: nn.Module) -> None:
    """torchvision's ResNet init: kaiming normal (fan_out) convs, BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Backbone(nn.Module):
    """A ResNet trunk whose stages use the operators of `spec`.

    ``forward_features(x)`` returns the four stage maps, described by ``feature_info``
    (``num_chs``, ``reduction`` w.r.t. the input, ``module`` name); ``forward(x)`` the last one.
    """

    def __init__(self, spec: BackboneSpec, *, deploy: bool = False, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.stem, reduction = build_stem(spec)
        block = BLOCKS[spec.block]
        in_chs = spec.widths[0]
        self.feature_info: list[dict[str, int | str]] = []
        for i, (depth, width, stage) in enumerate(zip(spec.depths, spec.widths, spec.stages, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(block(in_chs, width, stride if j == 0 else 1, stage, deploy=deploy))
                in_chs = width * block.expansion
            reduction *= stride
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": in_chs, "reduction": reduction, "module": f"layer{i + 1}"})
        self.num_features = in_chs
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    for bn in m.residual_norms():
                        nn.init.zeros_(bn.weight)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The output of layer1..layer4: (B, num_chs_i, H / reduction_i, W / reduction_i) each."""
        x = self.stem(x)
        features = []
        for info in self.feature_info:
            x = getattr(self, info["module"])(x)
            features.append(x)
        return features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[-1]


def build_backbone(spec: BackboneSpec, *, deploy: bool = False, zero_init_residual: bool = False) -> Backbone:
    """The backbone for `spec`; ``deploy=True`` builds deploy-form operators (to load a deployed state)."""
    return Backbone(spec, deploy=deploy, zero_init_residual=zero_init_residual)
