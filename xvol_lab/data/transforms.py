"""Train and eval transforms run by the loader workers: PIL image -> uint8 tensor (3, S, S).

The workers decode, crop, resize and flip; the conversion to float and the normalisation by a
per-channel mean and std run on the device after the batch transfer (`DeviceNormalize`), so a
batch crosses to the device at a quarter of the float32 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

Stats = Sequence[float]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Eval images are resized to image_size / CROP_FRACTION, then centre-cropped (224 -> 256 -> 224).
CROP_FRACTION = 0.875


def to_uint8() -> v2.Compose:
    """PIL image -> plain uint8 tensor (3, H, W)."""
    return v2.Compose([v2.ToImage(), v2.ToPureTensor()])


def to_tensor(mean: Stats, std: Stats) -> v2.Compose:
    """PIL image -> float32 tensor in [0, 1], normalised by per-channel `mean` and `std`: the whole
    CPU path, which `to_uint8` followed by `DeviceNormalize` reproduces (benchmarks/data.py times both)."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def imagenet_train(image_size: int) -> v2.Compose:
    """RandomResizedCrop + horizontal flip, the standard ImageNet training augmentation."""
    return v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(),
                       to_uint8()])


def imagenet_eval(image_size: int) -> v2.Compose:
    """Resize the short side to image_size / 0.875, then centre-crop image_size."""
    return v2.Compose([v2.Resize(int(image_size / CROP_FRACTION), antialias=True),
                       v2.CenterCrop(image_size), to_uint8()])


def cifar_train(image_size: int) -> v2.Compose:
    """Random crop with image_size // 8 padding + horizontal flip (CIFAR's standard augmentation)."""
    return v2.Compose([v2.Resize(image_size, antialias=True),
                       v2.RandomCrop(image_size, padding=image_size // 8), v2.RandomHorizontalFlip(),
                       to_uint8()])


def cifar_eval(image_size: int) -> v2.Compose:
    """Resize to image_size (a no-op at CIFAR's native 32 px)."""
    return v2.Compose([v2.Resize(image_size, antialias=True), to_uint8()])
