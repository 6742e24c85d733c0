"""ImageNet-layout folders: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*``."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import ImageFolder

from xvol_lab.data.base import ImageDataModule
from xvol_lab.data.config import DataConfig
from xvol_lab.data.device import DeviceNormalize
from xvol_lab.data.images import Transform, load_rgb
from xvol_lab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, imagenet_eval, imagenet_train
from xvol_lab.errors import ConfigError

LAYOUT = "expected <root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg (see data/README.md)"


def class_folders(split_dir: Path) -> list[str]:
    """Sorted class folder names of one split; a missing or empty split raises ConfigError."""
    if not split_dir.is_dir():
        raise ConfigError(f"imagefolder: no folder {split_dir}; {LAYOUT}")
    classes = sorted(e.name for e in split_dir.iterdir() if e.is_dir())  # as torchvision's find_classes
    if not classes:
        raise ConfigError(f"imagefolder: no class folders in {split_dir}; {LAYOUT}")
    return classes


def _differences(train: list[str], val: list[str]) -> str:
    parts = []
    for where, names in (("train", sorted(set(train) - set(val))), ("val", sorted(set(val) - set(train)))):
        if names:
            more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
            parts.append(f"only in {where}: {', '.join(names[:5])}{more}")
    return "; ".join(parts)


class ImageFolderDataModule(ImageDataModule):
    """torchvision `ImageFolder` on both splits, with ImageNet-style transforms and normalisation."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.root = Path(cfg.root)

    def count_classes(self) -> int:
        return len(class_folders(self.root / "train"))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_dir, val_dir = self.root / "train", self.root / "val"
        classes = class_folders(train_dir)
        if classes != class_folders(val_dir):
            raise ConfigError(f"imagefolder: class folders of {train_dir} and {val_dir} differ: "
                              f"{_differences(classes, class_folders(val_dir))}")
        size = self.cfg.image_size
        self.train_set = self._folder(train_dir, imagenet_train(size))
        self.val_set = self._folder(val_dir, imagenet_eval(size))
        self.normalize = DeviceNormalize(IMAGENET_MEAN, IMAGENET_STD)
        self.classes = classes
        self._num_classes = len(classes)

    @staticmethod
    def _folder(split_dir: Path, transform: Transform) -> ImageFolder:
        try:
            return ImageFolder(str(split_dir), transform=transform, loader=load_rgb)
        except FileNotFoundError as err:  # a class folder without a single image file
            raise ConfigError(f"imagefolder: {split_dir}: {err}") from None
