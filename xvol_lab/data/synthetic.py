"""`SyntheticDataModule`: `shapes` / `shapes-context` / `shapes-side`, generated in `prepare_data`, read in `setup`."""

from __future__ import annotations

from pathlib import Path

from xvol_lab.data.base import ImageDataModule
from xvol_lab.data.device import DeviceNormalize
from xvol_lab.data.generated import dataset_dir, generate, read_generated
from xvol_lab.data.images import DecodedImageDataset, ImageListDataset
from xvol_lab.data.transforms import to_uint8

IN_MEMORY_MIB = 512  # a generated set up to this size (decoded, train + val) is held in memory


class SyntheticDataModule(ImageDataModule):
    """A generated dataset, normalised by its own train mean/std; no augmentation (every image is new).

    A set of at most `IN_MEMORY_MIB` decoded is decoded once, in `setup`, and held in memory
    (`DecodedImageDataset`: the same tensors, no file decoded per epoch; each training process holds
    its own copy, loaded from the array the first one left in the set's folder,
    `xvol_lab.data.decoded`); a larger one is decoded on access.

    Lightning calls `prepare_data` once per node (local rank 0) and `setup` on every rank, so
    only one process draws images; the file lock in `generate` covers processes of other runs.
    """

    def count_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def folder(self) -> Path:
        return dataset_dir(self.cfg)

    @property
    def decoded_mib(self) -> float:
        """MiB of the train and val images decoded (uint8 RGB)."""
        cfg = self.cfg
        return (cfg.num_train + cfg.num_val) * 3 * cfg.image_size ** 2 / 2**20

    def prepare_data(self) -> None:
        generate(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        data = read_generated(self.cfg)
        if self.decoded_mib <= IN_MEMORY_MIB:
            self.train_set = DecodedImageDataset(data.samples["train"], cache=data.folder)
            self.val_set = DecodedImageDataset(data.samples["val"], cache=data.folder)
        else:
            self.train_set = ImageListDataset(data.samples["train"], to_uint8())
            self.val_set = ImageListDataset(data.samples["val"], to_uint8())
        self.normalize = DeviceNormalize(tuple(data.mean), tuple(data.std))
        self.classes = data.classes
