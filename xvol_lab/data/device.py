"""The part of the input pipeline that runs on the device, after the batch transfer.

Loaders ship uint8 images; `DeviceNormalize` turns them into float32 in [0, 1] and normalises
them by a per-channel mean and std with the arithmetic of torchvision's ``normalize`` (subtract,
then divide), so the result equals the former worker-side float path (bit for bit on CPU, within
float rounding elsewhere). The mean and std are built once per device and kept there: building them
per batch (as ``normalize`` does) is a blocking host-to-device copy on CUDA, two per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF


@lru_cache(maxsize=32)
def _channel_constants(values: tuple[float, ...], device: torch.device) -> Tensor:
    """`values` as a float32 (C, 1, 1) tensor on `device`, built once (outside inference mode, so
    that autograd may use it later)."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)


@dataclass(frozen=True)
class DeviceNormalize:
    """uint8 images -> float32 ``(x / 255 - mean) / std``; with `mean` None, only ``x / 255``
    (the detectors normalise inside the model). Applies to a batch ``(images, targets)`` whose
    images are one tensor (B, 3, H, W) or a list of (3, H, W) tensors."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.std is not None and not all(self.std):
            raise ValueError(f"DeviceNormalize: std {self.std} has a zero; expected positive values")

    def images(self, images: Tensor) -> Tensor:
        """`images` (uint8, channels third from last) as normalised float32."""
        out = TF.to_dtype(images, torch.float32, scale=True)
        if self.mean is None:
            return out
        return out.sub_(_channel_constants(self.mean, out.device)).div_(_channel_constants(self.std, out.device))

    def __call__(self, batch: Any) -> Any:
        images, *rest = batch
        images = [self.images(i) for i in images] if isinstance(images, list) else self.images(images)
        return (images, *rest)


__all__ = ["DeviceNormalize"]
