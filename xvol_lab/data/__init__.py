"""Datasets as LightningDataModules: classification (`shapes`, `shapes-context`, `imagefolder`,
`cifar10`), semantic segmentation (`shapes-seg`, `masks`), detection (`shapes-coco`, `coco`)."""

from xvol_lab.data.base import ImageDataModule
from xvol_lab.data.build import DATAMODULES, GENERATORS, build_datamodule, generate_dataset
from xvol_lab.data.config import DATASET_NAMES, SYNTHETIC_NAMES, DataConfig
from xvol_lab.data.generated import dataset_dir, generate

__all__ = ["DATAMODULES", "DATASET_NAMES", "GENERATORS", "SYNTHETIC_NAMES", "DataConfig", "ImageDataModule",
           "build_datamodule", "dataset_dir", "generate", "generate_dataset"]
