"""How closely an exported network (deploy checkpoint, ONNX model) follows the trained one.

Logits (classification, semantic segmentation): the largest ``|y' - y| / max(1, |y|)``, and for
classification whether the predicted class is the same for every image. Detections: each
prediction of the trained model is matched to one of the export's with the same label and the
highest box IoU; matched boxes and scores must agree within `BOX_TOL` (scaled like logits) and
`SCORE_TOL`, masks (thresholded at 0.5) with an IoU of at least `MASK_IOU`. A prediction left
unmatched is a failure, unless the other side kept at least as many detections of that image, all
scoring at least this one's score minus `SCORE_TOL` (a swap at the per-image cut, where a rounding
difference decides).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from xvol_lab.tasks.registry import task_record

DEPLOY_TOL = 1e-5  # classification logits, deploy checkpoint
LOGITS_TOL = 1e-4  # ONNX logits; segmentation logits of both artefacts
BOX_TOL = 1e-3
SCORE_TOL = 1e-3
MASK_IOU = 0.99
MASK_THRESHOLD = 0.5

Detections = list[dict[str, Tensor]]


@dataclass(frozen=True)
class Comparison:
    """One artefact against the trained network: a sentence of figures, and whether it passes."""

    artefact: str
    summary: str
    passed: bool


def scaled_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max(1, |expected|)."""
    return ((actual - expected).abs() / expected.abs().clamp(min=1)).max().item()


def compare_logits(artefact: str, actual: Tensor, expected: Tensor, tol: float, *,
                   argmax: bool) -> Comparison:
    """Logits within `tol` (scaled); with `argmax`, also the same class for every image."""
    error = scaled_error(actual.float(), expected.float())
    same = bool((actual.argmax(1) == expected.argmax(1)).all()) if argmax else True
    summary = f"max |diff|/max(1,|y|) = {error:.2e} (at most {tol:g})"
    if argmax:
        summary += f", same predicted class for {'every' if same else 'NOT every'} image"
    return Comparison(artefact, summary, error <= tol and same)


def _mask_iou(a: Tensor, b: Tensor) -> float:
    a, b = a > MASK_THRESHOLD, b > MASK_THRESHOLD
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def _at_cut(score: float, other: Tensor, own_count: int) -> bool:
    """Whether a prediction with `score` that the other side (`other` scores) lacks may have been
    swapped out at the per-image cut: the other side kept as many, down to about this score."""
    return len(other) >= own_count and score <= other.min().item() + SCORE_TOL


def compare_detections(artefact: str, actual: Detections, expected: Detections) -> Comparison:
    """Detections of the same images matched as the module doc says."""
    matched = unmatched = marginal = 0
    box_error = score_error = 0.0
    mask_iou = 1.0
    for got, want in zip(actual, expected, strict=True):
        free = torch.ones(len(got["boxes"]), dtype=torch.bool)
        ious = box_iou(want["boxes"].float(), got["boxes"].float()) if len(got["boxes"]) else None
        for i in range(len(want["boxes"])):
            candidates = free & (got["labels"] == want["labels"][i]) if ious is not None else free
            if ious is None or not candidates.any():
                j = None
            else:
                j = int(torch.where(candidates, ious[i], torch.tensor(-1.0)).argmax())
                if ious[i, j] < 0.5:
                    j = None
            if j is None:
                if _at_cut(want["scores"][i].item(), got["scores"], len(want["scores"])):
                    marginal += 1
                else:
                    unmatched += 1
                continue
            free[j] = False
            matched += 1
            box_error = max(box_error, scaled_error(got["boxes"][j].float(), want["boxes"][i].float()))
            score_error = max(score_error, abs(got["scores"][j].item() - want["scores"][i].item()))
            if "masks" in want:
                mask_iou = min(mask_iou, _mask_iou(got["masks"][j], want["masks"][i]))
        for j in torch.nonzero(free).flatten().tolist():
            if _at_cut(got["scores"][j].item(), want["scores"], len(got["scores"])):
                marginal += 1
            else:
                unmatched += 1
    summary = (f"{matched} detections matched, {unmatched} unmatched ({marginal} more at the score cut-off); "
               f"max box |diff|/max(1,|b|) = {box_error:.2e} (at most {BOX_TOL:g}), max score diff = "
               f"{score_error:.2e} (at most {SCORE_TOL:g})")
    passed = unmatched == 0 and box_error <= BOX_TOL and score_error <= SCORE_TOL
    if any("masks" in e for e in expected):
        summary += f", min mask IoU = {mask_iou:.4f} (at least {MASK_IOU:g})"
        passed = passed and mask_iou >= MASK_IOU
    return Comparison(artefact, summary, passed)


def compare_outputs(task: str, artefact: str, actual, expected, tol: float) -> Comparison:
    """The comparison that suits `task`'s output (`tol` for logits; the argmax too for per-image labels)."""
    output = task_record(task).output
    if output == "instances":
        return compare_detections(artefact, actual, expected)
    return compare_logits(artefact, actual, expected, tol, argmax=output == "labels")


__all__ = ["BOX_TOL", "DEPLOY_TOL", "LOGITS_TOL", "MASK_IOU", "SCORE_TOL", "Comparison", "compare_detections",
           "compare_logits", "compare_outputs", "scaled_error"]
