"""`DataConfig`: which dataset to load, where from, and how to batch it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from xvol_lab.data.canvas import HOLE_FREE_SHAPES
from xvol_lab.errors import ConfigError
from xvol_lab.schema import is_int

DatasetName = Literal["shapes", "shapes-context", "shapes-side", "imagefolder", "cifar10",  # classification
                      "shapes-seg", "masks",  # semantic segmentation
                      "shapes-coco", "coco"]  # detection and instance segmentation
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
SYNTHETIC_NAMES: tuple[str, ...] = ("shapes", "shapes-context", "shapes-side", "shapes-seg",
                                     "shapes-coco")
# Synthetic classification sets: labels are balanced (label = index mod num_classes).
BALANCED_NAMES: tuple[str, ...] = ("shapes", "shapes-context", "shapes-side")

# Synthetic classes are (shape, hue band) kinds: 10 shapes times at most 4 hue bands.
MAX_SYNTHETIC_CLASSES = 40
# Smallest image side at which the shapes stay recognisable (two corner shapes, or overlapping
# instances, need more room).
MIN_SYNTHETIC_SIZE = {"shapes": 16, "shapes-context": 32, "shapes-side": 32, "shapes-seg": 16,
                      "shapes-coco": 32}


@dataclass(frozen=True)
class DataConfig:
    """A dataset and its loader settings.

    `name` picks the dataset. Synthetic sets (`shapes`, `shapes-context`, `shapes-side`,
    `shapes-seg`, `shapes-coco`) are generated under ``<root>/<name>/`` from `image_size`, `num_train`,
    `num_val`, `num_classes` and `seed`. For `imagefolder`, `masks` and `coco`, `root` is the dataset
    folder (data/README.md has the layouts); for `cifar10` it holds ``cifar-10-batches-py/``; these
    take their classes and sizes from the files and ignore `num_train`, `num_val`, `num_classes`
    and `seed`.

    Loader settings left null are sized from the machine (xvol_lab/data/base.py): `num_workers`
    from the usable CPUs shared among the node's training processes, `pin_memory` on when training
    on CUDA, `persistent_workers` on whenever there are workers.
    """

    name: DatasetName = "shapes"
    root: str = "data"
    image_size: int = 32
    batch_size: int = 64
    num_workers: int | None = None
    num_train: int = 2000
    num_val: int = 500
    num_classes: int = 10
    seed: int = 0
    pin_memory: bool | None = None
    persistent_workers: bool | None = None

    def __post_init__(self) -> None:
        if self.name not in DATASET_NAMES:
            names = ", ".join(map(repr, DATASET_NAMES))
            raise ValueError(f"name: got {self.name!r}, expected one of {names}")
        if not self.root:
            raise ValueError("root: got '', expected a folder path")
        _check_min("image_size", self.image_size, 8)
        _check_min("batch_size", self.batch_size, 1)
        if self.num_workers is not None:
            _check_min("num_workers", self.num_workers, 0)
        _check_min("num_classes", self.num_classes, 2)
        _check_min("seed", self.seed, 0)
        if self.name == "shapes-coco":
            check_shapes_coco(self.image_size, self.num_train, self.num_val, self.num_classes, self.seed)
            return
        if self.name not in MIN_SYNTHETIC_SIZE:
            return
        _check_min("image_size", self.image_size, MIN_SYNTHETIC_SIZE[self.name], f" for {self.name}")
        if self.num_classes > MAX_SYNTHETIC_CLASSES:
            raise ValueError(f"num_classes: got {self.num_classes}, expected at most "
                             f"{MAX_SYNTHETIC_CLASSES} for {self.name}")
        if self.name not in BALANCED_NAMES:
            return
        # Labels are balanced (label = index mod num_classes), so every class needs a sample per split.
        _check_min("num_train", self.num_train, self.num_classes, f" (num_classes) for {self.name}")
        _check_min("num_val", self.num_val, self.num_classes, f" (num_classes) for {self.name}")


def check_batches(cfg: DataConfig, processes: int, prefix: str = "data.") -> None:
    """A synthetic training set that gives each of `processes` training processes at least one
    batch (ConfigError otherwise): a batch larger than a process's share left every process with
    zero batches (a full batch is required once the set holds one), or with one huge batch."""
    if cfg.name not in SYNTHETIC_NAMES or processes < 1:
        return
    share = cfg.num_train // processes
    if cfg.batch_size > share:
        split = f" split among {processes} processes gives each {share}" if processes > 1 else ""
        raise ConfigError(f"{prefix}batch_size: got {cfg.batch_size}, expected at most {share}: "
                          f"{prefix}num_train {cfg.num_train}{split}, and each training process needs "
                          "at least one full batch")


def check_shapes_coco(image_size: int, num_train: int, num_val: int, num_classes: int, seed: int) -> None:
    """The limits of a `shapes-coco` dataset: a ValueError names the first field out of range. Its
    classes are the shapes without holes (`HOLE_FREE_SHAPES`)."""
    why = " for shapes-coco"
    _check_min("image_size", image_size, MIN_SYNTHETIC_SIZE["shapes-coco"], why)
    for field, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1),
                              ("num_classes", num_classes, 1), ("seed", seed, 0)):
        _check_min(field, value, low, why)
    if num_classes > len(HOLE_FREE_SHAPES):
        raise ValueError(f"num_classes: got {num_classes}, expected at most {len(HOLE_FREE_SHAPES)}{why} "
                         f"({', '.join(HOLE_FREE_SHAPES)})")


def _check_min(field: str, value: int, low: int, why: str = "") -> None:
    if not is_int(value) or value < low:
        raise ValueError(f"{field}: got {value!r}, expected an integer >= {low}{why}")
