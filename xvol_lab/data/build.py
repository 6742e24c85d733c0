"""`build_datamodule` and `generate_dataset`: DataConfig -> its LightningDataModule / its generated folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lightning.pytorch import LightningDataModule

from xvol_lab.data import generated, shapes_seg
from xvol_lab.data.cifar import Cifar10DataModule
from xvol_lab.data.coco import CocoDataModule
from xvol_lab.data.config import DataConfig
from xvol_lab.data.imagefolder import ImageFolderDataModule
from xvol_lab.data.segmentation import MasksDataModule, ShapesSegDataModule
from xvol_lab.data.shapes_coco import ShapesCocoDataModule, ShapesCocoParams, generate_shapes_coco
from xvol_lab.data.synthetic import SyntheticDataModule

DATAMODULES: dict[str, Callable[[DataConfig], LightningDataModule]] = {
    "shapes": SyntheticDataModule,
    "shapes-context": SyntheticDataModule,
    "shapes-side": SyntheticDataModule,
    "imagefolder": ImageFolderDataModule,
    "cifar10": Cifar10DataModule,
    "shapes-seg": ShapesSegDataModule,
    "masks": MasksDataModule,
    "shapes-coco": ShapesCocoDataModule,
    "coco": CocoDataModule,
}

GENERATORS: dict[str, Callable[[DataConfig], Path]] = {
    "shapes": generated.generate,
    "shapes-context": generated.generate,
    "shapes-side": generated.generate,
    "shapes-seg": shapes_seg.generate,
    "shapes-coco": lambda cfg: generate_shapes_coco(cfg.root, ShapesCocoParams.from_config(cfg)),
}


def build_datamodule(cfg: DataConfig) -> LightningDataModule:
    """The datamodule of `cfg.name`: `.num_classes`, `.image_size`, and `.classes` after setup."""
    return DATAMODULES[cfg.name](cfg)


def generate_dataset(cfg: DataConfig) -> Path:
    """Generate the synthetic dataset of `cfg` unless it exists; returns its folder."""
    return GENERATORS[cfg.name](cfg)
