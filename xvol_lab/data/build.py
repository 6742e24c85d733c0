"""`build_datamodule`: DataConfig -> the LightningDataModule of its dataset."""

from __future__ import annotations

from xvol_lab.data.base import ImageDataModule
from xvol_lab.data.cifar import Cifar10DataModule
from xvol_lab.data.config import DataConfig
from xvol_lab.data.imagefolder import ImageFolderDataModule
from xvol_lab.data.synthetic import SyntheticDataModule

DATAMODULES: dict[str, type[ImageDataModule]] = {
    "shapes": SyntheticDataModule,
    "shapes-context": SyntheticDataModule,
    "imagefolder": ImageFolderDataModule,
    "cifar10": Cifar10DataModule,
}


def build_datamodule(cfg: DataConfig) -> ImageDataModule:
    """The datamodule of `cfg.name`: `.num_classes`, `.image_size`, and `.classes` after setup."""
    return DATAMODULES[cfg.name](cfg)
