"""CIFAR-10 from the python-format folder ``<root>/cifar-10-batches-py`` (read locally, never downloaded)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from xvol_lab.data.base import ImageDataModule
from xvol_lab.data.device import DeviceNormalize
from xvol_lab.data.images import ArrayImageDataset
from xvol_lab.data.transforms import CIFAR10_MEAN, CIFAR10_STD, cifar_eval, cifar_train
from xvol_lab.errors import ConfigError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
VAL_BATCH = "test_batch"
META = "batches.meta"
SIDE = 32


def cifar_dir(root: str | Path) -> Path:
    """The batches folder under `root`; raises ConfigError saying where to put the data if absent."""
    path = Path(root) / FOLDER
    if not (path / META).is_file():
        raise ConfigError(f"cifar10: no CIFAR-10 data at {path}; extract cifar-10-python.tar.gz from "
                          f"https://www.cs.toronto.edu/~kriz/cifar.html into {Path(root)}/")
    return path


def _unpickle(path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise ConfigError(f"cifar10: missing file {path}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ConfigError(f"cifar10: {path}: not a CIFAR-10 python batch ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cifar10: {path}: expected a pickled dict, got {type(data).__name__}")
    return data


def read_label_names(folder: Path) -> list[str]:
    """Class names from ``batches.meta``."""
    meta = _unpickle(folder / META)
    names = meta.get(b"label_names")
    if not names:
        raise ConfigError(f"cifar10: {folder / META}: no label_names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_batches(folder: Path, names: tuple[str, ...], num_classes: int) -> tuple[np.ndarray, list[int]]:
    """Images (N, 32, 32, 3) uint8 and labels from the named batch files."""
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = _unpickle(path)
        data, batch_labels = batch.get(b"data"), batch.get(b"labels")
        if data is None or batch_labels is None:
            raise ConfigError(f"cifar10: {path}: expected keys b'data' and b'labels'")
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE or len(data) != len(batch_labels):
            raise ConfigError(f"cifar10: {path}: expected data of shape (N, 3072) and N labels, "
                              f"got {data.shape} and {len(batch_labels)}")
        if any(not 0 <= int(y) < num_classes for y in batch_labels):
            raise ConfigError(f"cifar10: {path}: labels outside 0..{num_classes - 1}")
        images.append(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))  # (N, H, W, 3)
        labels.extend(int(y) for y in batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), labels


class Cifar10DataModule(ImageDataModule):
    """CIFAR-10 train (data_batch_1..5) and val (test_batch), held in memory."""

    def count_classes(self) -> int:
        return len(read_label_names(cifar_dir(self.cfg.root)))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder = cifar_dir(self.cfg.root)
        self.classes = read_label_names(folder)
        self._num_classes = len(self.classes)
        size = self.cfg.image_size
        train_images, train_labels = read_batches(folder, TRAIN_BATCHES, self._num_classes)
        val_images, val_labels = read_batches(folder, (VAL_BATCH,), self._num_classes)
        self.train_set = ArrayImageDataset(train_images, train_labels, cifar_train(size))
        self.val_set = ArrayImageDataset(val_images, val_labels, cifar_eval(size))
        self.normalize = DeviceNormalize(CIFAR10_MEAN, CIFAR10_STD)
