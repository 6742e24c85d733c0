"""Run an exported model on image files: `predict(export_dir, inputs, out)`.

The export folder (one ``trial_<n>/`` of `lab.py study export`, or the study's export folder when
it holds one trial) provides ``deploy.pt`` (network, classes, category ids, preprocessing) and,
with ``onnx=True``, ``model.onnx`` (onnxruntime) or ``model.pt2``. Images (files, or folders
searched recursively for `IMAGE_SUFFIXES`) are prepared as validation prepared them (for the ONNX
detector: resized to its fixed S x S), batched, and the results written into the new folder `out`:

- classification: ``predictions.csv``, one row per image and rank (``image, rank, label, class,
  probability``) for the top-k classes;
- detection / instance segmentation: ``images.json`` (a COCO ground-truth skeleton: the images
  with ids, sizes and file names, and the categories), ``bbox_results.json`` and, with masks,
  ``segm_results.json`` (COCO results: ``pycocotools.COCO.loadRes`` reads them), boxes and masks
  in each image's own pixel coordinates;
- semantic segmentation: one palette PNG per image (``masks/<name>.png``, pixel value = label, at
  the image's own size) and ``classes.txt``.

Files that cannot be read as images are skipped and listed in the result; `out` appears whole
(staged beside it, then renamed), and only when at least one image was predicted.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from xvol_lab.atomic import temp_dir
from xvol_lab.data.images import UnreadableImageError, load_rgb
from xvol_lab.errors import ConfigError
from xvol_lab.tasks.coco_eval import rescale_prediction, to_coco_results
from xvol_lab.tasks.export import Deployed, Preprocess, load_deployed
from xvol_lab.tasks.onnx import ONNX_FILE, PROGRAM_FILE, load_portable
from xvol_lab.tasks.registry import task_record

DEPLOY_FILE = "deploy.pt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class PredictResult:
    """What `predict` did: images predicted, files skipped (path, why), files written."""

    predicted: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The files named by `inputs` (folders: their images, recursively, sorted); a missing path
    raises `ConfigError` naming it."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise ConfigError(f"{item}: no such file or folder; expected images or folders of images")
    if not files:
        raise ConfigError(f"{', '.join(map(str, inputs))}: no images found (looked for "
                          f"{', '.join(IMAGE_SUFFIXES)})")
    return files


def palette() -> list[int]:
    """The PASCAL VOC colour map (label k -> the bits of k spread over R, G, B), as a flat PIL palette."""
    colours = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours += [r, g, b]
    return colours


def load_export(export_dir: str | Path, onnx: bool = False) -> tuple[Deployed, Callable[[Any], Any]]:
    """The deployed model of `export_dir` and the network to run (the deploy checkpoint, or with
    `onnx` the folder's ONNX model / torch.export program)."""
    folder = Path(export_dir)
    trials = sorted(p.parent for p in folder.glob(f"trial_*/{DEPLOY_FILE}"))
    if not (folder / DEPLOY_FILE).is_file() and len(trials) == 1:
        folder = trials[0]  # a study's export of one trial
    if not (folder / DEPLOY_FILE).is_file():
        names = ", ".join(t.name for t in trials)
        hint = f" (this study export has {len(trials)}: {names})" if trials else ""
        raise ConfigError(f"{folder}: no {DEPLOY_FILE}; expected a trial folder of `lab.py study export`, or "
                          f"its export folder when it holds one trial{hint}")
    deployed = load_deployed(folder / DEPLOY_FILE)
    if deployed.preprocess is None:
        raise ConfigError(f"{folder / DEPLOY_FILE}: exported without its data, so the preprocessing is "
                          "unknown; expected an export made where the trial's data was present")
    if not onnx:
        return deployed, deployed.network
    for name in (ONNX_FILE, PROGRAM_FILE):
        if (folder / name).is_file():
            return deployed, load_portable(folder / name, deployed.config.task)
    raise ConfigError(f"{folder}: no {ONNX_FILE} or {PROGRAM_FILE}; expected a complete export folder")


Batch = tuple[list[Path], list[Tensor], list[tuple[int, int]], int]


def _batches(files: Sequence[Path], preprocess: Preprocess, batch_size: int,
             skipped: list[tuple[Path, str]]) -> Iterable[Batch]:
    """(paths, prepared images, original (h, w) sizes, files consumed) per batch of `files`;
    unreadable files go to `skipped`."""
    transform = preprocess.transform()
    for start in range(0, len(files), batch_size):
        paths, images, sizes = [], [], []
        chunk = files[start:start + batch_size]
        for path in chunk:
            try:
                image = load_rgb(path)
            except UnreadableImageError as err:
                skipped.append((path, str(err)))
                continue
            paths.append(path)
            images.append(transform(image))
            sizes.append((image.height, image.width))
        yield paths, images, sizes, len(chunk)


def _names(files: Sequence[Path]) -> dict[Path, str]:
    """A unique relative name per file (its path below the inputs' common folder)."""
    resolved = [p.resolve() for p in files]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return {p: str(r.relative_to(root)) for p, r in zip(files, resolved, strict=True)}


class _Writer:
    """Collects the predictions of one task and writes its files into a folder, by what its network
    returns (`TaskRecord.output`): a CSV of the top classes, mask images, or COCO results."""

    def __init__(self, deployed: Deployed, names: dict[Path, str], top_k: int) -> None:
        self.deployed, self.names, self.top_k = deployed, names, top_k
        self.record = task_record(deployed.config.task)
        self.rows: list[list[Any]] = []
        self.images: list[dict[str, Any]] = []
        self.results: dict[str, list[dict[str, Any]]] = {"bbox": [], "segm": []}
        self.masks: dict[str, np.ndarray] = {}

    def add(self, paths: list[Path], inputs: list[Tensor], sizes: list[tuple[int, int]],
            outputs: Any) -> None:
        if self.record.output == "labels":
            probs = outputs.float().softmax(1)
            top = probs.topk(min(self.top_k, probs.shape[1]), dim=1)
            for path, values, labels in zip(paths, top.values.tolist(), top.indices.tolist(), strict=True):
                for rank, (p, label) in enumerate(zip(values, labels, strict=True), start=1):
                    self.rows.append([self.names[path], rank, label, self._class(label), f"{p:.6f}"])
        elif self.record.output == "pixels":
            for path, logits, size in zip(paths, outputs, sizes, strict=True):
                resized = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)
                self.masks[self.names[path]] = resized[0].argmax(0).to(torch.uint8).numpy()
        else:
            ids = self.deployed.category_ids or tuple(range(1, self.deployed.num_classes + 1))
            for path, image, size, prediction in zip(paths, inputs, sizes, outputs, strict=True):
                image_id = len(self.images) + 1
                self.images.append({"id": image_id, "file_name": self.names[path], "height": size[0],
                                    "width": size[1]})
                prediction = rescale_prediction(prediction, tuple(image.shape[-2:]), size)
                for kind, entries in to_coco_results(image_id, prediction, ids).items():
                    self.results[kind] += entries

    def _class(self, label: int) -> str:
        classes = self.deployed.classes
        return classes[label] if label < len(classes) else str(label)

    def write(self, folder: Path) -> list[Path]:
        if self.record.output == "labels":
            text = io.StringIO()
            table = csv.writer(text)
            table.writerow(["image", "rank", "label", "class", "probability"])
            table.writerows(self.rows)
            (folder / "predictions.csv").write_text(text.getvalue())
            return [folder / "predictions.csv"]
        if self.record.output == "pixels":
            colours = palette()
            written = [folder / "classes.txt"]
            (folder / "classes.txt").write_text("".join(f"{c}\n" for c in self.deployed.classes))
            for name, mask in self.masks.items():
                path = (folder / "masks" / name).with_suffix(".png")
                path.parent.mkdir(parents=True, exist_ok=True)
                image = Image.fromarray(mask, mode="L").convert("P")
                image.putpalette(colours)
                image.save(path)
                written.append(path)
            return written
        ids = self.deployed.category_ids or tuple(range(1, self.deployed.num_classes + 1))
        categories = [{"id": i, "name": self._class(k)} for k, i in enumerate(ids)]
        files = {"images.json": {"images": self.images, "categories": categories, "annotations": []},
                 "bbox_results.json": self.results["bbox"]}
        if self.record.instance_masks:
            files["segm_results.json"] = self.results["segm"]
        for name, content in files.items():
            (folder / name).write_text(json.dumps(content) + "\n")
        return [folder / name for name in files]


def predict(export_dir: str | Path, inputs: Iterable[str | Path], out: str | Path, *, onnx: bool = False,
            batch_size: int = 16, top_k: int = 5,
            on_batch: Callable[[int, int], None] | None = None) -> PredictResult:
    """Predict every image of `inputs` with the export in `export_dir`, writing into the new folder
    `out` (see the module doc). `on_batch(done, total)` is called after each batch (progress).
    Raises `ConfigError` (nothing written) for a bad export, a missing input, an `out` that exists
    and is not an empty folder, or when no image could be read."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists; expected a new or empty folder for the predictions")
    deployed, network = load_export(export_dir, onnx)
    preprocess = deployed.preprocess
    lists = task_record(deployed.config.task).takes_image_lists
    if onnx and lists:  # the exported detector takes S x S images only
        preprocess = dataclasses.replace(preprocess, fixed_size=True)
    files = image_files(inputs)
    result = PredictResult()
    writer = _Writer(deployed, _names(files), top_k)
    done = 0
    with torch.inference_mode():
        for paths, images, sizes, consumed in _batches(files, preprocess, batch_size, result.skipped):
            if paths:
                batch = images if lists else torch.stack(images)
                writer.add(paths, images, sizes, network(batch))
                result.predicted += len(paths)
            done += consumed
            if on_batch is not None:
                on_batch(done, len(files))
    if result.predicted == 0:
        raise ConfigError(f"{result.skipped[0][1]}; no image could be read ({len(result.skipped)} skipped)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = temp_dir(out)
    try:
        written = writer.write(staged)
        if out.exists():
            out.rmdir()
        staged.rename(out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    result.written = [out / p.relative_to(staged) for p in written]
    return result


__all__ = ["IMAGE_SUFFIXES", "PredictResult", "image_files", "load_export", "palette", "predict"]
