"""ResNet blocks as in torchvision, with every 3x3 convolution + BatchNorm replaced by the stage's operator.

An operator (`xvol_lab.ops.create_op`) includes its own BatchNorm and no activation, so the 'conv'
operator makes these blocks torchvision's BasicBlock / Bottleneck (v1.5: stride on the 3x3).
"""

from __future__ import annotations

from torch import Tensor, nn

from xvol_lab.models.spec import StageSpec
from xvol_lab.ops import create_op


def make_op(stage: StageSpec, in_chs: int, out_chs: int, stride: int, deploy: bool) -> nn.Module:
    """The stage's operator in place of a 3x3 conv + BatchNorm."""
    return create_op(stage.op, in_chs, out_chs, stride, deploy=deploy, **stage.op_kwargs())


def downsample(in_chs: int, out_chs: int, stride: int) -> nn.Sequential | None:
    """The shortcut projection (1x1 conv + BatchNorm) when the shape changes, else None (identity)."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """relu(op2(relu(op1(x))) + shortcut(x)); op1 carries the stride."""

    expansion = 1

    def __init__(self, in_chs: int, width: int, stride: int, stage: StageSpec, *,
                 deploy: bool = False) -> None:
        super().__init__()
        self.op1 = make_op(stage, in_chs, width, stride, deploy)
        self.relu = nn.ReLU(inplace=True)
        self.op2 = make_op(stage, width, width, 1, deploy)
        self.downsample = downsample(in_chs, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.op1(x))
        out = self.op2(out)
        return self.relu(out + identity)

    def residual_norms(self) -> list[nn.Module]:
        """The BatchNorms whose output is added to the shortcut (zeroed by zero_init_residual)."""
        return [m for m in self.op2.modules() if isinstance(m, nn.BatchNorm2d)]


class Bottleneck(nn.Module):
    """relu(bn3(conv3(relu(op2(relu(bn1(conv1(x))))))) + shortcut(x)); op2 (the 3x3) carries the stride."""

    expansion = 4

    def __init__(self, in_chs: int, width: int, stride: int, stage: StageSpec, *,
                 deploy: bool = False) -> None:
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.op2 = make_op(stage, width, width, stride, deploy)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample(in_chs, out_chs, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.op2(out))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def residual_norms(self) -> list[nn.Module]:
        """The BatchNorm whose output is added to the shortcut (zeroed by zero_init_residual)."""
        return [self.bn3]


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
