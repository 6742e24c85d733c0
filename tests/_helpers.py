"""Test helpers shared by several test files (imported as a plain module from tests/)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (so folding is exercised)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 2 - 1)
    return model


def assert_close_scaled(actual: Tensor, expected: Tensor, tol: float) -> None:
    """The spec's bound |actual - expected| <= tol * max(1, |expected|), elementwise."""
    scale = expected.abs().clamp(min=1)
    torch.testing.assert_close(actual / scale, expected / scale, atol=tol, rtol=0)
