"""`pointwise`: 1x1 convolution, stride s, then BatchNorm (deploy: one 1x1 convolution with bias).

The no-spatial-mixing ablation row: a stage built of it adds nothing to the receptive field (its
stride-2 block subsamples), so a network with it in stages 3-4 is a positive control for the
long-range proxy, where no unit may see both discs (data/README.md)."""

from __future__ import annotations

from typing import Any, ClassVar

from xvol_lab.ops.conv import ConvBN


class PointwiseBN(ConvBN):
    """`ConvBN` with its kernel fixed at 1x1 (no options); output ceil(H/s) x ceil(W/s)."""

    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, deploy: bool = False) -> None:
        super().__init__(in_chs, out_chs, stride, kernel_size=1, deploy=deploy)
