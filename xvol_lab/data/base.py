"""`ImageDataModule`: the dataloader settings shared by every dataset."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from xvol_lab.data.config import DataConfig


class ImageDataModule(LightningDataModule):
    """Base class: subclasses fill `train_set`, `val_set` and `classes` in `setup`.

    `num_classes` must be known before `setup` (the model is built first), so subclasses
    define it from the config or from a cheap look at the files.
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.classes: list[str] = []

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        cfg = self.cfg
        return DataLoader(
            dataset, batch_size=cfg.batch_size, shuffle=train,
            # A last batch of one sample breaks BatchNorm in training; keep at least one batch.
            drop_last=train and len(dataset) >= cfg.batch_size,
            num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=cfg.num_workers > 0)
