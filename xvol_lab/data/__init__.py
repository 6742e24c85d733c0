"""Datasets as LightningDataModules: classification (`shapes`, `shapes-context`, `shapes-side`,
`imagefolder`, `cifar10`), semantic segmentation (`shapes-seg`, `masks`), detection (`shapes-coco`, `coco`).

The exports below are imported on first use (`xvol_lab.lazy`): `DataConfig` comes without Lightning.
"""

from xvol_lab.lazy import lazy_exports

_EXPORTS = {
    "base": ["ImageDataModule"],
    "build": ["DATAMODULES", "GENERATORS", "build_datamodule", "generate_dataset"],
    "config": ["DATASET_NAMES", "SYNTHETIC_NAMES", "DataConfig"],
    "generated": ["dataset_dir", "generate"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
