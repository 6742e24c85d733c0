"""COCO-format instance datasets (an instances JSON + an image folder) for detection and instance masks.

The JSON is checked when loaded: a missing key, an annotation of an undeclared category or image,
or a missing image file raises a one-line `ConfigError` naming the file and the id. Annotations
whose box has zero width or height are skipped, counted and logged once (torchvision's reference
drops them too). Images without annotations are kept (negative images), crowd annotations
(``iscrowd: 1``) are left out of the targets, and category ids map to contiguous labels
``1..K`` in id order (0 is the background).

A `CocoDataModule` split lives at ``<root>/annotations/instances_{split}.json`` with images in
``<root>/images/{split}/`` (the layout `shapes-coco` writes), or in the COCO 2017 download layout
``<root>/annotations/instances_{split}2017.json`` and ``<root>/{split}2017/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from xvol_lab.data.base import ImageDataModule
from xvol_lab.data.config import DataConfig
from xvol_lab.data.images import load_rgb
from xvol_lab.errors import ConfigError

log = logging.getLogger(__name__)

REQUIRED_KEYS = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area"),
    "categories": ("id", "name"),
}
ITEM = {"images": "image", "annotations": "annotation", "categories": "category"}
SPLITS = ("train", "val")
# (annotation file, image folder) of a split, relative to the dataset root, in the order tried.
LAYOUTS = (("annotations/instances_{split}.json", "images/{split}"),
           ("annotations/instances_{split}2017.json", "{split}2017"))

# Last step of every pipeline: tv_tensors -> plain tensors (the image stays uint8; the datamodule
# scales it to [0, 1] on the device, and torchvision's detectors normalise it).
TO_TENSORS = (v2.ToPureTensor(),)

Target = dict[str, Any]
Transform = Callable[[tv_tensors.Image, Target], tuple[Tensor, Target]]


def read_instances(path: Path) -> dict[str, Any]:
    """The parsed instances JSON; unreadable or malformed files raise ConfigError."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such annotation file") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: got {type(data).__name__}, expected an object with "
                          f"{', '.join(REQUIRED_KEYS)}")
    return data


def check_instances(data: dict[str, Any], path: Path, *, masks: bool) -> None:
    """Raise ConfigError, naming `path` and the offending id, for anything the loader cannot use."""
    for section, keys in REQUIRED_KEYS.items():
        if not isinstance(data.get(section), list):
            raise ConfigError(f"{path}: missing key '{section}' (expected a list)")
        for i, item in enumerate(data[section]):
            needed = keys + ("segmentation",) if masks and section == "annotations" else keys
            missing = [k for k in needed if not isinstance(item, dict) or k not in item]
            if missing:
                where = f"id {item['id']}" if isinstance(item, dict) and "id" in item else f"entry {i}"
                raise ConfigError(f"{path}: {ITEM[section]} {where}: missing key '{missing[0]}'")
    images = {img["id"] for img in data["images"]}
    categories = {cat["id"] for cat in data["categories"]}
    for ann in data["annotations"]:
        where = f"{path}: annotation id {ann['id']}"
        if ann["category_id"] not in categories:
            declared = ", ".join(map(str, sorted(categories)))
            raise ConfigError(f"{where}: category_id {ann['category_id']!r} is not declared in "
                              f"'categories' ({declared})")
        if ann["image_id"] not in images:
            raise ConfigError(f"{where}: image_id {ann['image_id']!r} is not declared in 'images'")
        box = ann["bbox"]
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise ConfigError(f"{where}: bbox {box!r}, expected [x, y, width, height]")
        segm = ann.get("segmentation")
        is_rle = isinstance(segm, dict) and {"counts", "size"} <= set(segm)
        if masks and not (isinstance(segm, list) or is_rle):
            raise ConfigError(f"{where}: segmentation must be a list of polygons or an RLE "
                              f"{{'counts', 'size'}}")


def quiet_coco(data: dict[str, Any]) -> COCO:
    """A pycocotools `COCO` index of `data` (without its progress prints)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoInstances(Dataset):
    """One split: ``(image, target)`` pairs, the image a uint8 tensor (3, H, W).

    The target holds ``boxes`` (N, 4) XYXY float, ``labels`` (N,) in 1..K, ``masks`` (N, H, W)
    uint8 when `masks`, ``image_id`` and ``orig_size`` (height, width of the file, i.e. the
    coordinates of the annotations). `transforms` takes and returns ``(image, target)`` with
    tv_tensors (`detection_transforms`); without it the image is returned as it is.
    ``coco`` is the pycocotools index of the whole file (crowds included), for evaluation;
    ``category_ids[label - 1]`` is the category of a label.
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, *, masks: bool = True,
                 transforms: Transform | None = None) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.masks = masks
        self.transforms = transforms or v2.Compose(TO_TENSORS)
        data = read_instances(self.annotation_file)
        check_instances(data, self.annotation_file, masks=masks)
        self.coco = quiet_coco(data)
        self.category_ids = sorted(self.coco.cats)
        self.classes = [str(self.coco.cats[c]["name"]) for c in self.category_ids]
        self.label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.image_ids = sorted(self.coco.imgs)
        self._check_files()
        self.skipped = 0
        self.instances: dict[int, list[dict[str, Any]]] = {}
        for image_id in self.image_ids:
            kept = []
            for ann in self.coco.imgToAnns[image_id]:
                if ann.get("iscrowd", 0):
                    continue
                if not (ann["bbox"][2] > 0 and ann["bbox"][3] > 0):
                    self.skipped += 1
                    continue
                kept.append(ann)
            self.instances[image_id] = kept
        if self.skipped:
            log.warning("%s: skipped %d annotations whose box has zero width or height", self.annotation_file,
                        self.skipped)

    def _check_files(self) -> None:
        for image_id in self.image_ids:
            path = self.image_dir / self.coco.imgs[image_id]["file_name"]
            if not path.is_file():
                anns = self.coco.imgToAnns[image_id]
                refs = f", annotation id {anns[0]['id']}" if anns else ""
                raise ConfigError(f"{self.annotation_file}: image id {image_id}{refs}: no image file {path}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def _masks(self, anns: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
        out = np.zeros((len(anns), height, width), dtype=np.uint8)
        for i, ann in enumerate(anns):
            try:
                out[i] = self.coco.annToMask(ann)
            except (TypeError, ValueError, IndexError, KeyError) as err:
                raise ConfigError(f"{self.annotation_file}: annotation id {ann['id']}: unreadable "
                                  f"segmentation ({type(err).__name__}: {err})") from None
        return out

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        pil = load_rgb(path)
        height, width = info["height"], info["width"]
        if pil.size != (width, height):
            raise ConfigError(f"{self.annotation_file}: image id {image_id}: {path} is {pil.size[0]}x"
                              f"{pil.size[1]}, the annotations say {width}x{height}")
        anns = self.instances[image_id]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        target: Target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": image_id,
            "orig_size": (height, width),
        }
        if self.masks:
            target["masks"] = tv_tensors.Mask(torch.from_numpy(self._masks(anns, height, width)))
        return self.transforms(tv_tensors.Image(v2.functional.pil_to_tensor(pil)), target)


def detection_transforms(image_size: int, *, train: bool) -> v2.Compose:
    """Resize the short side to `image_size` (boxes and masks alike); in training also flip at random.

    Boxes are clamped to the image and boxes left under 1 px dropped with their labels and masks.
    """
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip()] if train else []
    steps += [v2.Resize(image_size, antialias=True), v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(),
              *TO_TENSORS]
    return v2.Compose(steps)


def collate_lists(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """``[(image, target), ...]`` -> ``([images], [targets])``: detection models take lists."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of `split` under `root`, in the first layout that exists."""
    for ann, images in LAYOUTS:
        ann_path, image_dir = root / ann.format(split=split), root / images.format(split=split)
        if ann_path.is_file():
            return ann_path, image_dir
    tried = " or ".join(str(root / ann.format(split=split)) for ann, _ in LAYOUTS)
    raise ConfigError(f"coco: no {split} annotations; expected {tried} (see data/README.md)")


class CocoDataModule(ImageDataModule):
    """Train and val `CocoInstances` under ``cfg.root``, batched as lists (`collate_lists`).

    Both splits are resized to ``cfg.image_size`` (short side); validation targets keep
    ``orig_size`` so predictions can be mapped back to the annotations' coordinates.
    `num_classes` is the number of categories (without the background). Images are scaled to
    [0, 1] on the device (the detector normalises them).
    """

    def __init__(self, cfg: DataConfig, *, masks: bool = True) -> None:
        super().__init__(cfg)
        self.masks = masks

    @property
    def root(self) -> Path:
        return Path(self.cfg.root)

    def count_classes(self) -> int:
        path = split_paths(self.root, "val")[0]
        data = read_instances(path)
        if not isinstance(data.get("categories"), list) or not data["categories"]:
            raise ConfigError(f"{path}: missing key 'categories' (expected a non-empty list)")
        return len(data["categories"])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        size = self.cfg.image_size
        sets = {split: CocoInstances(*split_paths(self.root, split), masks=self.masks,
                                     transforms=detection_transforms(size, train=split == "train"))
                for split in SPLITS}
        train, val = sets["train"], sets["val"]
        if train.category_ids != val.category_ids:
            raise ConfigError(f"{val.annotation_file}: category ids {val.category_ids} differ from "
                              f"{train.annotation_file}'s {train.category_ids}")
        self.train_set, self.val_set, self.classes = train, val, train.classes
        self._num_classes = len(train.classes)

    def _loader(self, dataset: Dataset | None, *, train: bool, **extra: Any) -> DataLoader:
        return super()._loader(dataset, train=train, collate_fn=collate_lists, **extra)
