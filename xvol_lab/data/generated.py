"""Synthetic datasets on disk: generated once, atomically, into a folder named by their parameters.

Layout of ``<root>/<name>/c{classes}-s{size}-n{train}-v{val}-seed{seed}/``::

    train/<class>/<index>.png, val/<class>/<index>.png   (also loadable as an image folder)
    index.csv       split, path, label and the generator's metadata of every image
    manifest.json   generator, version, parameters, class names, counts, train mean/std

Generation writes into a temporary folder beside the target and `os.replace`s it into place, so
the target either is complete or does not exist; a file lock serialises concurrent generators
(DDP ranks, study workers), and the late ones find the finished folder. Image i of a split is
drawn from ``default_rng([seed, split, i])``: the same seed gives byte-identical PNGs.
"""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xvol_lab.atomic import temp_dir
from xvol_lab.data import context, shapes, side
from xvol_lab.data.config import DataConfig
from xvol_lab.errors import ConfigError

log = logging.getLogger(__name__)

INDEX = "index.csv"
MANIFEST = "manifest.json"
SPLITS = {"train": 0, "val": 1}  # split -> its seed stream


@dataclass(frozen=True)
class Drawer:
    """How a synthetic classification set draws its images: class names for K classes, and
    draw(rng, label, K, size) -> (image, meta). (`xvol_lab.data.build.GENERATORS` maps every synthetic
    dataset to the function that writes it.)"""

    version: int
    class_names: Callable[[int], list[str]]
    draw: Callable[[np.random.Generator, int, int, int], tuple[np.ndarray, dict[str, Any]]]


DRAWERS: dict[str, Drawer] = {
    "shapes": Drawer(shapes.VERSION, shapes.class_names, shapes.draw),
    "shapes-context": Drawer(context.VERSION, context.class_names, context.draw),
    "shapes-side": Drawer(side.VERSION, side.class_names, side.draw),
}


@dataclass(frozen=True)
class GeneratedData:
    """A generated dataset as read back: classes, train mean/std and (path, label) per split."""

    folder: Path
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    samples: dict[str, list[tuple[Path, int]]]


def _drawer(cfg: DataConfig) -> Drawer:
    if cfg.name not in DRAWERS:
        raise ConfigError(f"{cfg.name!r} is not a synthetic dataset; expected one of {', '.join(DRAWERS)}")
    return DRAWERS[cfg.name]


def dataset_params(cfg: DataConfig) -> dict[str, int]:
    """The config fields that determine a generated dataset's content."""
    return {"num_classes": cfg.num_classes, "image_size": cfg.image_size, "num_train": cfg.num_train,
            "num_val": cfg.num_val, "seed": cfg.seed}


def params_folder(params: dict[str, int]) -> str:
    """The folder name of a dataset's parameters (`dataset_params`): ``c10-s32-n2000-v500-seed0``."""
    return (f"c{params['num_classes']}-s{params['image_size']}-n{params['num_train']}-v{params['num_val']}"
            f"-seed{params['seed']}")


def dataset_dir(cfg: DataConfig) -> Path:
    """Where `cfg`'s synthetic dataset lives; different parameters never share a folder."""
    _drawer(cfg)
    return Path(cfg.root) / cfg.name / params_folder(dataset_params(cfg))


class PixelStats:
    """Per-channel mean and std of RGB uint8 images (scaled to [0, 1]), added one image at a time."""

    def __init__(self) -> None:
        self.count = 0
        self.sum = np.zeros(3)
        self.sum_sq = np.zeros(3)

    def add(self, image: np.ndarray) -> None:
        pixels = image.reshape(-1, 3) / 255.0
        self.count += len(pixels)
        self.sum += pixels.sum(0)
        self.sum_sq += (pixels**2).sum(0)

    def rounded(self) -> dict[str, list[float]]:
        """``{"mean": [r, g, b], "std": [r, g, b]}`` rounded to 6 decimals, as manifests store them."""
        mean = self.sum / self.count
        std = np.sqrt(np.maximum(self.sum_sq / self.count - mean**2, 1e-12))
        return {"mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std]}


def write_manifest(folder: Path, name: str, version: int, cfg: DataConfig, classes: list[str],
                   stats: PixelStats) -> None:
    """``manifest.json``: generator `name`, version, parameters, classes, counts and the train mean/std."""
    manifest = {"generator": name, "version": version, "params": dataset_params(cfg), "classes": classes,
                "counts": {"train": cfg.num_train, "val": cfg.num_val}, **stats.rounded()}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def check_made_by(path: Path, found: Any, expected: Any, folder: Path) -> None:
    """A dataset file made by another generator, version or parameters (`found`) raises ConfigError."""
    if found != expected:
        raise ConfigError(f"{path}: made by {found}, expected {expected}; delete {folder} to regenerate")


def read_manifest(folder: Path, name: str, version: int, cfg: DataConfig) -> dict[str, Any]:
    """The manifest in `folder` of generator `name`'s dataset of `cfg`; a missing, unreadable or foreign
    one is a ConfigError."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        others = sorted(p.name for p in folder.parent.glob("*/") if (p / MANIFEST).is_file())
        found = f" (found: {', '.join(others)})" if others else ""
        raise ConfigError(f"{name}: no dataset at {folder}{found}; run `python lab.py data make "
                          f"{name}` with the same --set values, or call prepare_data()") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable manifest ({err}); delete {folder} to regenerate") from None
    expected = {"generator": name, "version": version, "params": dataset_params(cfg)}
    check_made_by(path, {k: manifest.get(k) for k in expected} if isinstance(manifest, dict) else manifest,
                  expected, folder)
    return manifest


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (an fcntl lock file) for the `with` block: one generator at a time."""
    fd = os.open(path, os.O_CREAT | os.O_RDONLY, 0o666)  # read-only: a colleague's lock file locks too
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def generate_folder(target: Path, marker: str, write: Callable[[Path], None]) -> bool:
    """Make dataset folder `target` atomically, once, whatever the number of concurrent callers.

    `write(tmp)` fills a temporary folder beside `target` that must end holding the file `marker`;
    it is then renamed into place, so an interrupted run never leaves a `target` that loads, and a
    later run clears its leftovers. Returns True if this call generated the folder.
    """
    if (target / marker).is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / f".{target.name}.lock"):
        if (target / marker).is_file():  # another process made it while we waited
            return False
        if target.exists():
            raise ConfigError(f"{target}: exists but has no {marker}; delete it to regenerate")
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        start = time.perf_counter()
        tmp = temp_dir(target)  # the usual folder mode, not mkdtemp's 0700
        try:
            write(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("generated %s in %.1f s", target, time.perf_counter() - start)
    return True


def generate(cfg: DataConfig) -> Path:
    """Generate `cfg`'s synthetic dataset unless it exists; returns its folder."""
    target = dataset_dir(cfg)
    generate_folder(target, MANIFEST, lambda tmp: _write(tmp, cfg))
    read_manifest(target, cfg.name, _drawer(cfg).version, cfg)
    return target


def _write(folder: Path, cfg: DataConfig) -> None:
    gen = _drawer(cfg)
    classes = gen.class_names(cfg.num_classes)
    rows: list[dict[str, Any]] = []
    stats = PixelStats()
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
        for name in classes:
            (folder / split / name).mkdir(parents=True)
        for i in range(count):
            label = i % cfg.num_classes
            image, meta = gen.draw(np.random.default_rng([cfg.seed, SPLITS[split], i]), label,
                                   cfg.num_classes, cfg.image_size)
            path = f"{split}/{classes[label]}/{i:05d}.png"
            Image.fromarray(image).save(folder / path)
            rows.append({"split": split, "path": path, "label": label, **meta})
            if split == "train":
                stats.add(image)
    with open(folder / INDEX, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_manifest(folder, cfg.name, gen.version, cfg, classes, stats)


def read_generated(cfg: DataConfig) -> GeneratedData:
    """Read back the dataset `generate(cfg)` made; a missing or foreign folder raises ConfigError."""
    folder = dataset_dir(cfg)
    manifest = read_manifest(folder, cfg.name, _drawer(cfg).version, cfg)
    samples: dict[str, list[tuple[Path, int]]] = {split: [] for split in SPLITS}
    try:
        with open(folder / INDEX, newline="") as f:
            for row in csv.DictReader(f):
                samples[row["split"]].append((folder / row["path"], int(row["label"])))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"{folder / INDEX}: unreadable index ({type(err).__name__}: {err}); "
                          f"delete {folder} to regenerate") from None
    counts = {split: len(items) for split, items in samples.items()}
    if counts != manifest["counts"]:
        raise ConfigError(f"{folder / INDEX}: {counts} images, {MANIFEST} says {manifest['counts']}")
    return GeneratedData(folder=folder, classes=list(manifest["classes"]), mean=tuple(manifest["mean"]),
                         std=tuple(manifest["std"]), samples=samples)
