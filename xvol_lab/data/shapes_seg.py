"""`shapes-seg`: the synthetic shapes with a per-pixel class mask, written in the `masks` layout.

An image holds 1 to 3 shapes (the kinds of `shapes`: shape, and hue band beyond 10 kinds) on the
cluttered background with distractor blobs; shapes may overlap, later ones on top. Its mask gives
each pixel the class (kind + 1) of the top shape covering at least half of it, else 0 (background).
With K classes there are K - 1 shape kinds.

Layout of ``<root>/shapes-seg/c{K}-s{S}-n{N}-v{V}-seed{seed}/`` (the `masks` layout plus a manifest)::

    images/{train,val}/<index>.png   RGB
    masks/{train,val}/<index>.png    8-bit labels (mode L)
    classes.txt                      background, circle, square, ... (one per line)
    manifest.json                    generator, version, parameters, classes, counts, train mean/std

Generated like `shapes` (`xvol_lab.data.generated`): image i of a split is drawn from
``default_rng([seed, split, i])`` (same seed, byte-identical PNGs), into a temporary folder that is
renamed into place under a file lock, so the folder is complete or absent and concurrent callers
generate it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xvol_lab.data import generated
from xvol_lab.data.canvas import Placement, add_blobs, background, paint, shape_mask, to_uint8
from xvol_lab.data.config import MIN_SYNTHETIC_SIZE, DataConfig
from xvol_lab.data.generated import SPLITS, generate_folder
from xvol_lab.data.shapes import kind_name, place

NAME = "shapes-seg"
VERSION = 1
BACKGROUND = "background"
CLASSES_FILE = "classes.txt"
MAX_SHAPES = 3
COVERED = 0.5  # a pixel belongs to a shape when the shape covers at least half of it
MIN_SIZE = MIN_SYNTHETIC_SIZE["shapes"]


def class_names(num_classes: int) -> list[str]:
    """'background', then the K - 1 shape kinds: 'circle', 'square', ... ('circle-hue1' beyond 10 kinds)."""
    kinds = num_classes - 1
    return [BACKGROUND, *(kind_name(k, kinds) for k in range(kinds))]


def draw(rng: np.random.Generator, num_classes: int,
         size: int) -> tuple[np.ndarray, np.ndarray, list[Placement]]:
    """One image (size, size, 3) uint8, its label mask (size, size) uint8 and the shapes drawn, in order."""
    kinds = num_classes - 1
    img = background(rng, size)
    add_blobs(rng, img, int(rng.integers(1, 4)))
    mask = np.zeros((size, size), np.uint8)
    placements = []
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        kind = int(rng.integers(kinds))
        radius = rng.uniform(0.15, 0.3) * size
        p = place(rng, kind, kinds, radius, (radius, size - radius), (radius, size - radius))
        paint(rng, img, p)
        mask[shape_mask(p, size) >= COVERED] = kind + 1
        placements.append(p)
    return to_uint8(img), mask, placements


def dataset_dir(cfg: DataConfig) -> Path:
    """Where `cfg`'s dataset lives: ``<root>/shapes-seg/c{K}-s{S}-n{N}-v{V}-seed{seed}``."""
    return Path(cfg.root) / NAME / generated.params_folder(generated.dataset_params(cfg))


def generate(cfg: DataConfig) -> Path:
    """Generate `cfg`'s shapes-seg dataset unless it exists; returns its folder."""
    target = dataset_dir(cfg)
    generate_folder(target, generated.MANIFEST, lambda tmp: _write(tmp, cfg))
    read_manifest(cfg)
    return target


def _write(folder: Path, cfg: DataConfig) -> None:
    classes = class_names(cfg.num_classes)
    (folder / CLASSES_FILE).write_text("\n".join(classes) + "\n")
    stats = generated.PixelStats()
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
        (folder / "images" / split).mkdir(parents=True)
        (folder / "masks" / split).mkdir(parents=True)
        for i in range(count):
            image, mask, _ = draw(np.random.default_rng([cfg.seed, SPLITS[split], i]), cfg.num_classes,
                                  cfg.image_size)
            Image.fromarray(image).save(folder / "images" / split / f"{i:05d}.png")
            Image.fromarray(mask, mode="L").save(folder / "masks" / split / f"{i:05d}.png")
            if split == "train":
                stats.add(image)
    generated.write_manifest(folder, NAME, VERSION, cfg, classes, stats)


def read_manifest(cfg: DataConfig) -> dict[str, Any]:
    """The manifest of `cfg`'s dataset; a missing dataset or one made with other parameters raises."""
    return generated.read_manifest(dataset_dir(cfg), NAME, VERSION, cfg)


__all__ = ["BACKGROUND", "CLASSES_FILE", "NAME", "class_names", "dataset_dir", "draw", "generate",
           "read_manifest"]
