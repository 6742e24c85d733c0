"""Image datasets whose unreadable files raise a one-line `ConfigError` naming the file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from xvol_lab.data.decoded import load_or_decode
from xvol_lab.errors import ConfigError

Transform = Callable[[Image.Image], Any]


class UnreadableImageError(ConfigError):
    """An image file that cannot be opened or decoded.

    A DataLoader worker re-raises its errors as ``type(err)("Caught ... Original Traceback ...")``;
    this class keeps only the original one-line message from that text, so the CLI still prints
    one line when the bad file is met in a worker process.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.partition(f"{type(self).__name__}: ")[2] or last
        super().__init__(message)


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode `path` as an RGB image; any failure names the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


class ImageListDataset(Dataset):
    """Images listed as (path, label) pairs, decoded on access."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Transform) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label


class ArrayImageDataset(Dataset):
    """Images held in memory as a uint8 array (N, H, W, 3) with integer labels."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], transform: Transform) -> None:
        if len(images) != len(targets):
            raise ValueError(f"got {len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = list(targets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(Image.fromarray(self.images[index])), self.targets[index]


def decode_same_size(samples: Sequence[tuple[Path, int]]) -> np.ndarray:
    """The images of `samples` decoded into one uint8 array (N, H, W, 3); a file of another size
    than the first raises a one-line `ConfigError` naming it."""
    images = [np.asarray(load_rgb(path)) for path, _ in samples]
    shape = images[0].shape if images else None
    for (path, _), image in zip(samples, images, strict=True):
        if image.shape != shape:
            raise ConfigError(f"{path}: image of {image.shape[1]}x{image.shape[0]} px, expected "
                              f"{shape[1]}x{shape[0]} as the other images of its set")
    return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


class DecodedImageDataset(Dataset):
    """Images listed as (path, label) pairs, all of one size, decoded once into one uint8 tensor
    (N, 3, H, W): item i is what `ImageListDataset` with `to_uint8()` returns, without opening and
    decoding a file every epoch. A file of another size raises a one-line `ConfigError` naming it.
    With `cache` (the set's folder) the decoded array is kept there for the next process
    (`xvol_lab.data.decoded`)."""

    def __init__(self, samples: Sequence[tuple[Path, int]], cache: Path | None = None) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        if cache is not None and self.samples:
            images = load_or_decode(self.samples, cache, decode_same_size)
        else:
            images = decode_same_size(self.samples)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2) if self.samples else torch.empty(0)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]
