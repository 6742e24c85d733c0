"""The part of the input pipeline that runs on the device, after the batch transfer.

Loaders ship uint8 images; `DeviceNormalize` turns them into float32 in [0, 1] and normalises
them by a per-channel mean and std with torchvision's own kernels, so the result equals the
former worker-side float path (bit for bit on CPU, within float rounding elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class DeviceNormalize:
    """uint8 images -> float32 ``(x / 255 - mean) / std``; with `mean` None, only ``x / 255``
    (the detectors normalise inside the model). Applies to a batch ``(images, targets)`` whose
    images are one tensor (B, 3, H, W) or a list of (3, H, W) tensors."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def images(self, images: Tensor) -> Tensor:
        """`images` (uint8, channels third from last) as normalised float32."""
        out = TF.to_dtype(images, torch.float32, scale=True)
        return out if self.mean is None else TF.normalize(out, list(self.mean), list(self.std))

    def __call__(self, batch: Any) -> Any:
        images, *rest = batch
        images = [self.images(i) for i in images] if isinstance(images, list) else self.images(images)
        return (images, *rest)


__all__ = ["DeviceNormalize"]
