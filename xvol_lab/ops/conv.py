"""`conv`: KxK convolution, stride s, then BatchNorm (deploy: one convolution with bias)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from xvol_lab.ops.base import ReparamOp
from xvol_lab.ops.bn_folding import fuse_conv_bn
from xvol_lab.ops.options import check_channels, check_kernel_size, check_stride


class ConvBN(ReparamOp):
    """KxK convolution (padding K//2) followed by BatchNorm; output ceil(H/s) x ceil(W/s)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"kernel_size": 3}

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, kernel_size: int = 3,
                 deploy: bool = False) -> None:
        check_channels(in_chs, out_chs)
        super().__init__(in_chs, out_chs, check_stride(stride), deploy=deploy)
        self.kernel_size = check_kernel_size(kernel_size)
        self._build()

    def _build(self) -> None:
        k = self.kernel_size
        self.conv = nn.Conv2d(self.in_chs, self.out_chs, k, self.stride, k // 2, bias=self.deploy)
        if not self.deploy:
            self.bn = nn.BatchNorm2d(self.out_chs)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) if self.deploy else self.bn(self.conv(x))

    def deploy_state_dict(self) -> dict[str, Tensor]:
        weight, bias = fuse_conv_bn(self.conv.weight, self.bn)
        return {"conv.weight": weight, "conv.bias": bias}
