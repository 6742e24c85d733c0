"""`SyntheticDataModule`: `shapes` / `shapes-context` / `shapes-side`, generated in `prepare_data`, read in `setup`."""

from __future__ import annotations

from pathlib import Path

from xvol_lab.data.base import ImageDataModule
from xvol_lab.data.device import DeviceNormalize
from xvol_lab.data.generated import dataset_dir, generate, read_generated
from xvol_lab.data.images import ImageListDataset
from xvol_lab.data.transforms import to_uint8


class SyntheticDataModule(ImageDataModule):
    """A generated dataset, normalised by its own train mean/std; no augmentation (every image is new).

    Lightning calls `prepare_data` once per node (local rank 0) and `setup` on every rank, so
    only one process draws images; the file lock in `generate` covers processes of other runs.
    """

    def count_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def folder(self) -> Path:
        return dataset_dir(self.cfg)

    def prepare_data(self) -> None:
        generate(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        data = read_generated(self.cfg)
        self.train_set = ImageListDataset(data.samples["train"], to_uint8())
        self.val_set = ImageListDataset(data.samples["val"], to_uint8())
        self.normalize = DeviceNormalize(tuple(data.mean), tuple(data.std))
        self.classes = data.classes
