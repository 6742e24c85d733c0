"""COCO evaluation of detector outputs: conversion to COCO results, gathering across processes, COCOeval.

Results are kept per image id (``{image_id: {'bbox': [...], 'segm': [...]}}``) so that the copies
of an image that DistributedSampler adds to even out the ranks are counted once.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torch.nn import functional as F
from torchvision.models.detection.transform import resize_boxes

from xvol_lab.tasks.metrics import VAL_BOX_AP, VAL_BOX_AP50, VAL_BOX_AP75, VAL_MASK_AP, VAL_MASK_AP50

# COCOeval iouType -> (metric name, index into COCOeval.stats): AP@[.5:.95], AP@.5, AP@.75.
METRICS: dict[str, tuple[tuple[str, int], ...]] = {
    "bbox": ((VAL_BOX_AP, 0), (VAL_BOX_AP50, 1), (VAL_BOX_AP75, 2)),
    "segm": ((VAL_MASK_AP, 0), (VAL_MASK_AP50, 1)),
}
MASK_THRESHOLD = 0.5

ImageResults = dict[str, list[dict[str, Any]]]  # iou type -> COCO result dicts of one image


def rescale_prediction(prediction: Mapping[str, Tensor], size: tuple[int, int],
                       orig_size: tuple[int, int]) -> dict[str, Tensor]:
    """`prediction` for an image of `size` (H, W) mapped to `orig_size`: boxes scaled, soft masks
    resized bilinearly."""
    out = dict(prediction)
    if tuple(size) == tuple(orig_size):
        return out
    out["boxes"] = resize_boxes(prediction["boxes"], list(size), list(orig_size))
    if "masks" in prediction:
        masks = prediction["masks"]
        out["masks"] = F.interpolate(masks, size=tuple(orig_size), mode="bilinear", align_corners=False) \
            if len(masks) else masks.new_zeros((0, 1, *orig_size))
    return out


def to_coco_results(image_id: int, prediction: Mapping[str, Tensor],
                    category_ids: Sequence[int]) -> ImageResults:
    """COCO result dicts of one image: ``bbox`` as [x, y, w, h] and, when the prediction has masks,
    ``segm`` as compressed RLE of the mask thresholded at 0.5. Label l is category ``category_ids[l - 1]``."""
    boxes = prediction["boxes"].detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = prediction["scores"].detach().float().cpu().tolist()
    cats = [int(category_ids[int(label) - 1]) for label in prediction["labels"].cpu()]
    results: ImageResults = {"bbox": [
        {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
        for c, b, s in zip(cats, xywh, scores, strict=True)]}
    if "masks" in prediction:
        binary = (prediction["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)  # (N, H, W)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
        results["segm"] = [
            {"image_id": image_id, "category_id": c, "score": s,
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}}
            for c, s, rle in zip(cats, scores, rles, strict=True)]
    return results


def merge_results(parts: Iterable[Mapping[int, ImageResults]]) -> dict[int, ImageResults]:
    """One entry per image id: a later copy of an image (a sampler's padding) is dropped."""
    merged: dict[int, ImageResults] = {}
    for part in parts:
        for image_id, results in part.items():
            merged.setdefault(int(image_id), results)
    return merged


def gather_results(local: Mapping[int, ImageResults]) -> dict[int, ImageResults] | None:
    """All processes' results merged on rank 0 (None on the other ranks); `local` itself when
    torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return merge_results([local])
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(dict(local), parts, dst=0)
    return merge_results(parts) if parts is not None else None


def broadcast_metrics(metrics: dict[str, float] | None) -> dict[str, float]:
    """Rank 0's `metrics` on every process (`metrics` itself without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return dict(metrics or {})
    box = [metrics]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def evaluate(coco_gt: COCO, results: Mapping[int, ImageResults],
             iou_types: Sequence[str]) -> dict[str, float]:
    """COCOeval on the images in `results` (only those: a partial validation is scored on what it
    saw). A type without any detection scores 0; -1 means no ground truth to score against."""
    image_ids = sorted(results)
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        detections = [dict(r) for image_id in image_ids for r in results[image_id].get(iou_type, [])]
        if not detections:
            metrics.update({name: 0.0 for name, _ in METRICS[iou_type]})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports progress with print
            coco_dt = coco_gt.loadRes(detections)
            coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        metrics.update({name: float(coco_eval.stats[i]) for name, i in METRICS[iou_type]})
    return metrics
