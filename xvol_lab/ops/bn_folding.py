"""BatchNorm folding: the only place the fusion math lives (pure, differentiable functions)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``g * z + c``: returns ``(g, c)``, one value per channel."""
    g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    c = bn.bias - bn.running_mean * g
    return g, c


def fuse_conv_bn(weight: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Fold ``BN(conv(x; weight))`` into one convolution: ``(g * W, c)`` per output channel."""
    g, c = bn_affine(bn)
    return weight * g.reshape(-1, *([1] * (weight.dim() - 1))), c
