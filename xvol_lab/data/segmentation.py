"""Semantic segmentation data: `masks` folders (VOC/ADE20K style) and the generated `shapes-seg`.

Layout of a `masks` dataset (``DataConfig.root`` is the dataset folder)::

    <root>/classes.txt                  one class name per line; line k is label k
    <root>/images/{train,val}/<stem>.jpg|.jpeg|.png
    <root>/masks/{train,val}/<stem>.png  8-bit labels (mode L or P), same size as the image; 255 = ignore

A sample is (image (3, S, S) uint8, mask (S, S) int64); the datamodule normalises the images on the
device after the batch transfer. Training: random scale (shorter
side in [S/2, 2S)), random S x S crop (padding: image 0, mask 255 = ignore), horizontal flip;
evaluation: resize to S x S. Masks are resampled with nearest neighbour, so labels stay labels.
A missing classes.txt, split folder or mask raises `ConfigError` in `setup`; a mask whose size
differs from its image or whose labels are outside the class list (other than 255) raises it when
the sample is loaded, naming the mask file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from xvol_lab.data import shapes_seg
from xvol_lab.data.base import ImageDataModule
from xvol_lab.data.config import DataConfig
from xvol_lab.data.device import DeviceNormalize
from xvol_lab.data.images import UnreadableImageError, load_rgb
from xvol_lab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Stats
from xvol_lab.errors import ConfigError

IGNORE_INDEX = 255
CLASSES_FILE = shapes_seg.CLASSES_FILE
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val")
LAYOUT = ("expected <root>/classes.txt, <root>/images/{train,val}/*.jpg|png and "
          "<root>/masks/{train,val}/*.png (see data/README.md)")


class BadMaskError(UnreadableImageError):
    """A mask that does not fit its image or the class list (one line, also from a DataLoader worker)."""


def read_classes(root: str | Path) -> list[str]:
    """The class names of ``<root>/classes.txt``: 2 to 255 distinct non-empty names."""
    path = Path(root) / CLASSES_FILE
    try:
        names = [line.strip() for line in path.read_text().splitlines()]
    except FileNotFoundError:
        raise ConfigError(f"masks: no {path}; {LAYOUT}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read class list ({err})") from None
    while names and not names[-1]:
        names.pop()
    if "" in names:
        raise ConfigError(f"{path}: line {names.index('') + 1} is empty; expected one class name per line")
    if not 2 <= len(names) <= IGNORE_INDEX:
        raise ConfigError(f"{path}: got {len(names)} classes, expected 2 to {IGNORE_INDEX} "
                          f"({IGNORE_INDEX} is the ignore label)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{path}: class names repeated: {', '.join(repeated)}; expected distinct names")
    return names


def mask_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) paths of one split, sorted by image name; a missing folder or mask raises."""
    image_dir, mask_dir = Path(root) / "images" / split, Path(root) / "masks" / split
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise ConfigError(f"masks: no folder {folder}; {LAYOUT}")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ConfigError(f"masks: no .jpg/.png images in {image_dir}; {LAYOUT}")
    pairs = []
    for image in images:
        mask = mask_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise ConfigError(f"{image}: no mask {mask}; expected one label PNG per image, same stem")
        pairs.append((image, mask))
    return pairs


def load_mask(path: Path) -> np.ndarray:
    """The labels (H, W) uint8 of an 8-bit single-channel PNG (mode L, or P: the palette indices)."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadMaskError(f"{path}: cannot read mask ({type(err).__name__}: {err})") from None
    if img.mode not in ("L", "P"):
        raise BadMaskError(f"{path}: mode {img.mode}, expected an 8-bit single-channel label PNG "
                           f"(mode L or P)")
    return np.array(img, dtype=np.uint8)


def segmentation_train(image_size: int) -> v2.Compose:
    """Random scale (shorter side in [S/2, 2S)), random S x S crop (padding 0 / ignore), h-flip."""
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResize(image_size // 2, 2 * image_size),
        v2.RandomCrop(image_size, pad_if_needed=True,
                      fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
        v2.RandomHorizontalFlip(),
        v2.ToPureTensor(),
    ])


def segmentation_eval(image_size: int) -> v2.Compose:
    """Resize to S x S (mask: nearest)."""
    return v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size)), v2.ToPureTensor()])


class SegmentationDataset(Dataset):
    """(image, mask) pairs decoded on access; `transform(image, Mask)` keeps them aligned."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], classes_file: Path, num_classes: int,
                 transform: v2.Transform) -> None:
        self.pairs = list(pairs)
        self.classes_file = classes_file
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.pairs[index]
        image, mask = load_rgb(image_path), load_mask(mask_path)
        if mask.shape != (image.height, image.width):
            raise BadMaskError(f"{mask_path}: {mask.shape[1]}x{mask.shape[0]} pixels, but its image "
                               f"{image_path} is {image.width}x{image.height}")
        bad = np.unique(mask[(mask >= self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise BadMaskError(f"{mask_path}: labels {', '.join(map(str, bad[:5].tolist()))} outside "
                               f"0..{self.num_classes - 1} ({self.num_classes} classes in "
                               f"{self.classes_file}; {IGNORE_INDEX} = ignore)")
        image, mask = self.transform(image, tv_tensors.Mask(torch.from_numpy(mask)))
        return image, mask.long()


class MasksDataModule(ImageDataModule):
    """The `masks` layout under ``cfg.root``, normalised with the ImageNet mean/std."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.root = Path(cfg.root)

    def count_classes(self) -> int:
        return len(read_classes(self.root))

    def normalization(self) -> tuple[Stats, Stats]:
        """Per-channel (mean, std) the images are normalised with."""
        return IMAGENET_MEAN, IMAGENET_STD

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.classes = read_classes(self.root)
        self._num_classes = len(self.classes)
        pairs = {split: mask_pairs(self.root, split) for split in SPLITS}
        size, (mean, std) = self.cfg.image_size, self.normalization()
        classes_file = self.root / CLASSES_FILE
        self.train_set = SegmentationDataset(pairs["train"], classes_file, self._num_classes,
                                             segmentation_train(size))
        self.val_set = SegmentationDataset(pairs["val"], classes_file, self._num_classes,
                                           segmentation_eval(size))
        self.normalize = DeviceNormalize(tuple(mean), tuple(std))


class ShapesSegDataModule(MasksDataModule):
    """`shapes-seg`: generated in `prepare_data` under ``<root>/shapes-seg/<params>/``, read as `masks`,
    normalised with its own train mean/std (from the manifest)."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.root = shapes_seg.dataset_dir(cfg)
        self._manifest: dict[str, Any] | None = None

    def count_classes(self) -> int:
        return self.cfg.num_classes

    def prepare_data(self) -> None:
        shapes_seg.generate(self.cfg)

    def normalization(self) -> tuple[Stats, Stats]:
        if self._manifest is None:
            self._manifest = shapes_seg.read_manifest(self.cfg)
        return tuple(self._manifest["mean"]), tuple(self._manifest["std"])

    def setup(self, stage: str | None = None) -> None:
        self.normalization()  # a missing or foreign dataset raises before the folders are read
        super().setup(stage)


__all__ = ["IGNORE_INDEX", "MasksDataModule", "SegmentationDataset", "ShapesSegDataModule", "load_mask",
           "mask_pairs", "read_classes", "segmentation_eval", "segmentation_train"]
