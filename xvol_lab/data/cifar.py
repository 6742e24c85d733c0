"""CIFAR-10 from the python-format folder ``<root>/cifar-10-batches-py``, read by torchvision's
`CIFAR10` (never downloaded). Each file is first checked against torchvision's MD5 of the official
file, so that a missing, truncated or altered file is named in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from xvol_lab.data.base import ImageDataModule
from xvol_lab.data.device import DeviceNormalize
from xvol_lab.data.images import ArrayImageDataset
from xvol_lab.data.transforms import CIFAR10_MEAN, CIFAR10_STD, cifar_eval, cifar_train
from xvol_lab.errors import ConfigError


def cifar_dir(root: str | Path) -> Path:
    """The batches folder under `root`; raises ConfigError saying where to put the data if absent."""
    path = Path(root) / CIFAR10.base_folder
    if not (path / CIFAR10.meta["filename"]).is_file():
        raise ConfigError(f"cifar10: no CIFAR-10 data at {path}; extract cifar-10-python.tar.gz from "
                          f"https://www.cs.toronto.edu/~kriz/cifar.html into {Path(root)}/")
    return path


def check_files(folder: Path) -> None:
    """Every batch file and ``batches.meta`` present with the official MD5, or a ConfigError naming it."""
    meta = (CIFAR10.meta["filename"], CIFAR10.meta["md5"])
    for name, md5 in (*CIFAR10.train_list, *CIFAR10.test_list, meta):
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"cifar10: missing file {path}")
        if not check_integrity(str(path), md5):
            raise ConfigError(f"cifar10: {path}: not the official CIFAR-10 file (MD5 differs: truncated or "
                              "altered); extract cifar-10-python.tar.gz again")


def read_split(root: str | Path, train: bool) -> CIFAR10:
    """The train (data_batch_1..5) or val (test_batch) split, after the files' MD5 check."""
    check_files(cifar_dir(root))
    return CIFAR10(str(root), train=train, download=False)


class Cifar10DataModule(ImageDataModule):
    """CIFAR-10 train (data_batch_1..5) and val (test_batch), held in memory."""

    def count_classes(self) -> int:
        return len(read_split(self.cfg.root, train=False).classes)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val = read_split(self.cfg.root, train=True), read_split(self.cfg.root, train=False)
        self.classes = list(val.classes)
        self._num_classes = len(self.classes)
        size = self.cfg.image_size
        self.train_set = ArrayImageDataset(np.ascontiguousarray(train.data), train.targets, cifar_train(size))
        self.val_set = ArrayImageDataset(np.ascontiguousarray(val.data), val.targets, cifar_eval(size))
        self.normalize = DeviceNormalize(CIFAR10_MEAN, CIFAR10_STD)
