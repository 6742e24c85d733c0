"""Semantic FPN: the semantic branch of Panoptic FPN (Kirillov et al., 2019) on the searchable backbone.

The FPN (torchvision's `FeaturePyramidNetwork`: lateral 1x1 convs, top-down pathway with nearest
upsampling, 3x3 output convs) runs on the four stage maps, its input channels taken from the
backbone's `feature_info`. Each pyramid level then goes through scale stages (3x3 conv + GroupNorm
+ ReLU, each followed by 2x bilinear upsampling) until it reaches the finest level's resolution
(1/4 of the input with the 'imagenet' stem, 1/1 with the 'small' one); the finest level gets one
stage without upsampling. The levels are summed, a 1x1 conv gives the class logits, and a bilinear
upsample brings them to the input size.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import Conv2dNormActivation, FeaturePyramidNetwork

from xvol_lab.models.backbone import Backbone
from xvol_lab.models.spec import BackboneSpec, scale_width
from xvol_lab.schema import is_int

FPN_CHANNELS = 256  # the paper's FPN width at width_mult 1; the scale stages have half of it (128)
GN_GROUPS = 32  # the paper's GroupNorm groups, fewer for narrow heads (at least 4 channels a group)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups (up to 32) that divide `channels` into groups of >= 4 channels."""
    groups = max((g for g in range(1, GN_GROUPS + 1) if channels % g == 0 and channels // g >= 4), default=1)
    return nn.GroupNorm(groups, channels)


class SemanticFPN(nn.Module):
    """Per-pixel class logits (B, num_classes, H, W) for images (B, in_chans, H, W).

    `fpn_channels` defaults to 256 scaled by the spec's `width_mult` (like the backbone's widths);
    the scale stages use half of it. ``deploy=True`` builds deploy-form backbone operators, so the
    state of `xvol_lab.reparameterize(model)` loads into it.
    """

    def __init__(self, spec: BackboneSpec, num_classes: int, *, fpn_channels: int | None = None,
                 deploy: bool = False) -> None:
        super().__init__()
        if not is_int(num_classes) or num_classes < 1:
            raise ValueError(f"num_classes: got {num_classes!r}, expected a positive integer")
        if fpn_channels is None:
            fpn_channels = scale_width(FPN_CHANNELS, spec.width_mult)
        if not is_int(fpn_channels) or fpn_channels < 8:
            raise ValueError(f"fpn_channels: got {fpn_channels!r}, expected an integer >= 8 or None")
        self.spec = spec
        self.num_classes = num_classes
        self.fpn_channels = fpn_channels
        self.backbone = Backbone(spec, deploy=deploy)
        info = self.backbone.feature_info
        reductions = [int(i["reduction"]) for i in info]
        if reductions != [reductions[0] * 2**level for level in range(len(info))]:
            raise ValueError(f"feature_info reductions {reductions}: expected each level at half the "
                             f"resolution of the one before")
        self.fpn = FeaturePyramidNetwork([int(i["num_chs"]) for i in info], fpn_channels)
        head_channels = fpn_channels // 2
        # Level l (0 = finest) needs l upsampling stages, the finest one stage without upsampling.
        self.scale_heads = nn.ModuleList(
            nn.Sequential(*(Conv2dNormActivation(fpn_channels if k == 0 else head_channels, head_channels, 3,
                                                 norm_layer=group_norm) for k in range(max(1, level))))
            for level in range(len(info)))
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self._init_head()

    def _init_head(self) -> None:
        """Panoptic FPN's init: kaiming normal (fan_out) scale-stage convs, predictor normal(std=0.001)."""
        for m in self.scale_heads.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone.forward_features(x)
        names = [str(i["module"]) for i in self.backbone.feature_info]
        pyramid = list(self.fpn(OrderedDict(zip(names, features, strict=True))).values())  # finest first
        fused = None
        for level, (stages, p) in enumerate(zip(self.scale_heads, pyramid, strict=True)):
            for k, stage in enumerate(stages):
                p = stage(p)
                if level - k > 0:  # 2x up, to the exact size of the next finer level (odd sizes round up)
                    p = F.interpolate(p, size=pyramid[level - k - 1].shape[-2:], mode="bilinear",
                                      align_corners=False)
            fused = p if fused is None else fused + p
        logits = self.classifier(fused)  # (B, num_classes, H / r0, W / r0)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_semantic_fpn(spec: BackboneSpec, num_classes: int, *, fpn_channels: int | None = None,
                       deploy: bool = False) -> SemanticFPN:
    """The Semantic FPN for `spec`; ``deploy=True`` builds deploy-form operators (to load a deployed
    state)."""
    return SemanticFPN(spec, num_classes, fpn_channels=fpn_channels, deploy=deploy)


__all__ = ["FPN_CHANNELS", "SemanticFPN", "build_semantic_fpn", "group_norm"]
