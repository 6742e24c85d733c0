"""Datasets as LightningDataModules: synthetic `shapes`/`shapes-context`, `imagefolder`, `cifar10`."""

from xvol_lab.data.base import ImageDataModule
from xvol_lab.data.build import DATAMODULES, build_datamodule
from xvol_lab.data.config import DATASET_NAMES, SYNTHETIC_NAMES, DataConfig
from xvol_lab.data.generated import dataset_dir, generate

__all__ = ["DATAMODULES", "DATASET_NAMES", "SYNTHETIC_NAMES", "DataConfig", "ImageDataModule",
           "build_datamodule", "dataset_dir", "generate"]
