"""`shapes-coco`: a synthetic COCO-format instance dataset, generated on first use as real files.

Layout of ``<root>/shapes-coco/c{classes}-s{size}-n{train}-v{val}-seed{seed}/``::

    images/train/000001.png ...      images/val/000001.png ...
    annotations/instances_train.json annotations/instances_val.json

Each image shows 2 to 4 shapes on the cluttered background of `shapes` (xvol_lab.data.canvas);
later shapes may hide up to half of earlier ones. The category is the shape (hole-free shapes only:
a polygon cannot hold a hole), in any colour. Each annotation's segmentation is the visible part
of its shape: the shape's polygons when nothing covers it, else an RLE of what is left; ``bbox``
and ``area`` describe that segmentation. Image i of a split is drawn from
``default_rng([seed, split, i])``, so a seed gives byte-identical files. The folder is written
to a temporary folder and renamed into place under a file lock (as `xvol_lab.data.generated`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from xvol_lab.data.canvas import (
    GEOMETRY,
    HOLE_FREE_SHAPES,
    SHAPES,
    Placement,
    add_blobs,
    background,
    paint,
    to_uint8,
)
from xvol_lab.data.coco import CocoDataModule
from xvol_lab.data.config import DataConfig, check_shapes_coco
from xvol_lab.data.generated import SPLITS, check_made_by, generate_folder, params_folder
from xvol_lab.data.shapes import place
from xvol_lab.errors import ConfigError

NAME = "shapes-coco"
VERSION = 1
CLASS_SHAPES = HOLE_FREE_SHAPES  # category k + 1 is CLASS_SHAPES[k]
SHAPES_PER_IMAGE = (2, 4)
RADIUS = (0.12, 0.22)  # fraction of the image side
MIN_VISIBLE = 0.5  # a shape keeps at least this fraction of its area visible
PLACEMENT_TRIES = 10
COMPLETE = "annotations/instances_val.json"  # written last: its presence marks a finished folder


@dataclass(frozen=True)
class ShapesCocoParams:
    """What a `shapes-coco` folder depends on (the `DataConfig` fields of the same names)."""

    image_size: int = 64
    num_train: int = 200
    num_val: int = 50
    num_classes: int = len(CLASS_SHAPES)
    seed: int = 0

    def __post_init__(self) -> None:
        check_shapes_coco(self.image_size, self.num_train, self.num_val, self.num_classes, self.seed)

    @classmethod
    def from_config(cls, cfg: DataConfig) -> ShapesCocoParams:
        """The parameters of `cfg`; a value out of range raises ConfigError."""
        try:
            return cls(cfg.image_size, cfg.num_train, cfg.num_val, cfg.num_classes, cfg.seed)
        except ValueError as err:
            raise ConfigError(f"data.{err}") from None

    @property
    def folder_name(self) -> str:
        return params_folder(dataclasses.asdict(self))

    def info(self) -> dict[str, Any]:
        """The ``info`` block of the JSON files: generator, version and these parameters."""
        return {"description": NAME, "version": VERSION, "params": dataclasses.asdict(self)}


def shape_polygons(p: Placement) -> list[list[float]]:
    """The polygons of `p` in pixel coordinates (COCO's flat ``[x1, y1, x2, y2, ...]``): `GEOMETRY`
    rotated by ``p.angle``, scaled by ``p.radius`` and moved to ``(p.x, p.y)``, as `canvas.shape_mask`
    draws it."""
    theta = np.deg2rad(p.angle)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return [np.round(points @ rot.T * p.radius + [p.x, p.y], 2).ravel().tolist()
            for points, _ in GEOMETRY[p.shape]]


def polygon_mask(polygons: list[list[float]], size: int) -> np.ndarray:
    """The (size, size) uint8 mask pycocotools rasterises from `polygons` (their union)."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, size, size)))


Placed = tuple[int, Placement, np.ndarray]  # class index, placement, full (unoccluded) mask


def _place_shapes(rng: np.random.Generator, params: ShapesCocoParams) -> list[Placed]:
    """(class, placement, full mask) of each shape, in drawing order; every shape stays >= half visible."""
    size = params.image_size
    placed: list[Placed] = []
    for _ in range(int(rng.integers(SHAPES_PER_IMAGE[0], SHAPES_PER_IMAGE[1] + 1))):
        kind = int(rng.integers(params.num_classes))
        for _ in range(PLACEMENT_TRIES):
            radius = rng.uniform(*RADIUS) * size
            span = (radius, size - radius)
            p = place(rng, SHAPES.index(CLASS_SHAPES[kind]), len(SHAPES), radius, span, span)
            mask = polygon_mask(shape_polygons(p), size)
            masks = [m for _, _, m in placed] + [mask]
            if all(_visible(masks, i).sum() >= MIN_VISIBLE * m.sum() for i, m in enumerate(masks)):
                placed.append((kind, p, mask))
                break
    return placed


def _visible(masks: list[np.ndarray], i: int) -> np.ndarray:
    """Mask i minus every mask drawn after it."""
    later = np.any(masks[i + 1:], axis=0) if i + 1 < len(masks) else 0
    return (masks[i] > 0) & ~np.asarray(later, dtype=bool)


def draw(rng: np.random.Generator, params: ShapesCocoParams) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One (size, size, 3) uint8 image and its annotations (category_id, segmentation, bbox, area)."""
    img = background(rng, params.image_size)
    add_blobs(rng, img, int(rng.integers(0, 3)))
    placed = _place_shapes(rng, params)
    for _, p, _ in placed:
        paint(rng, img, p)
    masks = [m for _, _, m in placed]
    anns = []
    for i, (kind, p, mask) in enumerate(placed):
        visible = _visible(masks, i)
        if visible.sum() == mask.sum():
            segmentation: Any = shape_polygons(p)
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, *mask.shape))
        else:
            rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        anns.append({"category_id": kind + 1, "segmentation": segmentation, "iscrowd": 0,
                     "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
                     "area": float(mask_utils.area(rle))})
    return to_uint8(img), anns


def _write(folder: Path, params: ShapesCocoParams) -> None:
    (folder / "annotations").mkdir()
    categories = [{"id": k + 1, "name": CLASS_SHAPES[k], "supercategory": "shape"}
                  for k in range(params.num_classes)]
    for split, count in (("train", params.num_train), ("val", params.num_val)):
        (folder / "images" / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(count):
            image, anns = draw(np.random.default_rng([params.seed, SPLITS[split], i]), params)
            name = f"{i + 1:06d}.png"
            Image.fromarray(image).save(folder / "images" / split / name)
            images.append({"id": i + 1, "file_name": name, "height": params.image_size,
                           "width": params.image_size})
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **ann})
        data = {"info": params.info(), "images": images, "annotations": annotations, "categories": categories}
        (folder / f"annotations/instances_{split}.json").write_text(json.dumps(data))


def _check_complete(folder: Path, params: ShapesCocoParams) -> None:
    path = folder / COMPLETE
    try:
        info = json.loads(path.read_text()).get("info")
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(f"{path}: unreadable ({err}); delete {folder} to regenerate") from None
    check_made_by(path, info, params.info(), folder)


def shapes_coco_dir(root: str | Path, params: ShapesCocoParams) -> Path:
    """Where the dataset of `params` lives under `root`; different parameters never share a folder."""
    return Path(root) / NAME / params.folder_name


def generate_shapes_coco(root: str | Path, params: ShapesCocoParams) -> Path:
    """Generate the dataset of `params` under `root` unless it exists; returns its folder."""
    target = shapes_coco_dir(root, params)
    if not generate_folder(target, COMPLETE, lambda tmp: _write(tmp, params)):
        _check_complete(target, params)
    return target


class ShapesCocoDataModule(CocoDataModule):
    """`shapes-coco` from a `DataConfig` (image_size, num_train, num_val, num_classes, seed, root):
    generated in `prepare_data` (once per node), read in `setup` like any COCO folder."""

    def __init__(self, cfg: DataConfig, *, masks: bool = True) -> None:
        super().__init__(cfg, masks=masks)
        self.params = ShapesCocoParams.from_config(cfg)

    @property
    def root(self) -> Path:
        return shapes_coco_dir(self.cfg.root, self.params)

    def count_classes(self) -> int:
        return self.params.num_classes

    def prepare_data(self) -> None:
        generate_shapes_coco(self.cfg.root, self.params)
