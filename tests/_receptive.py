"""Receptive fields measured on the network itself, and the pixel distance between two drawn discs:
what the long-range proxies (`shapes-context`, `shapes-side`) are checked against."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import yaml

from xvol_lab.data.canvas import Placement, shape_mask
from xvol_lab.models.backbone import build_backbone
from xvol_lab.models.spec import BackboneSpec

REPO = Path(__file__).resolve().parents[1]


def study_data(name: str) -> dict:
    """The `base.data` mapping of shipped study `name`."""
    return yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())["base"]["data"]


def placement(meta: dict, prefix: str) -> Placement:
    return Placement(meta[prefix + "shape"], float(meta[prefix + "x"]), float(meta[prefix + "y"]),
                     float(meta[prefix + "radius"]), float(meta[prefix + "angle"]),
                     tuple(float(meta[prefix + c]) for c in "rgb"))


SMALL_STEM = BackboneSpec(depths=(2, 2, 2, 2), width_mult=0.25, stem="small")


def study_spec(name: str) -> BackboneSpec:
    """The base network of shipped study `name` (its `base.model`: block, depths, width, stem)."""
    model = yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())["base"]["model"]
    return BackboneSpec(block=model["block"], depths=tuple(model["depths"]), width_mult=model["width_mult"],
                        stem=model["stem"])


def positive_control_spec(name: str) -> BackboneSpec:
    """Study `name`'s base network with the stage changes of its positive control."""
    study = yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())
    spec = study_spec(name)
    for key, value in study["controls"]["positive"]["params"].items():
        stage, field = key.removeprefix("stage").split(".")
        spec = spec.with_stage(int(stage), **{field: value})
    return spec


def centre_unit_input_grad(size: int, stage: int, seed: int, batch: int,
                           spec: BackboneSpec = SMALL_STEM) -> torch.Tensor:
    """|d (centre unit of stage `stage`, all channels) / d input|, summed over the batch and colour
    channels, for the network of `spec` initialised with `seed` on `batch` random inputs."""
    torch.manual_seed(seed)
    net = build_backbone(spec).eval()
    x = torch.randn(batch, 3, size, size, requires_grad=True)
    feature = net.forward_features(x)[stage - 1]
    centre = feature.shape[-1] // 2
    feature[:, :, centre, centre].sum().backward()
    return x.grad.abs().sum((0, 1))


def receptive_field(size: int, stage: int, spec: BackboneSpec = SMALL_STEM) -> int:
    """Side in pixels of the input region that a stage-`stage` unit at the centre depends on:
    the support of the gradient of that unit (all channels) w.r.t. the input, over random inputs
    and two random initialisations of the small-stem ResNet-18 (the theoretical receptive field)."""
    support = torch.zeros(size, size, dtype=torch.bool)
    for seed in range(2):
        support |= centre_unit_input_grad(size, stage, seed, batch=2, spec=spec) > 0
    rows, cols = support.nonzero(as_tuple=True)
    return int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 1


def effective_receptive_field(size: int, stage: int, share: float = 0.95) -> float:
    """Side in pixels of the smallest square, centred on the gradient's centre of mass, that holds
    `share` of the gradient magnitude of the centre unit of stage `stage` w.r.t. the input (Luo et
    al. 2016's effective receptive field; 4 initialisations x 8 random inputs, at init)."""
    grad = torch.zeros(size, size)
    for seed in range(4):
        grad += centre_unit_input_grad(size, stage, seed, batch=8)
    coords = torch.arange(size, dtype=torch.float32)
    cy, cx = (grad.sum(1) * coords).sum() / grad.sum(), (grad.sum(0) * coords).sum() / grad.sum()
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    distance = torch.maximum((ys - cy).abs(), (xs - cx).abs())
    for half in torch.arange(0.5, size, 0.5).tolist():
        if grad[distance <= half].sum() >= share * grad.sum():
            return 2 * half
    return float(size)


def pixel_gap(a: Placement, b: Placement, size: int) -> int:
    """Smallest Chebyshev distance between a pixel that shape a touches and one that shape b touches."""
    pa = np.argwhere(shape_mask(a, size) > 0)
    pb = np.argwhere(shape_mask(b, size) > 0)
    return int(np.abs(pa[:, None, :] - pb[None, :, :]).max(-1).min())


def inside_image(p: Placement, size: int) -> bool:
    """Whether shape `p` lies wholly inside the size x size image: drawn on a canvas with a margin
    around the image, nothing of it lands in the margin."""
    pad = size // 4
    shifted = Placement(p.shape, p.x + pad, p.y + pad, p.radius, p.angle, p.color)
    padded = shape_mask(shifted, size + 2 * pad)
    total = float(padded.sum())
    return total > 0 and math.isclose(float(padded[pad:-pad, pad:-pad].sum()), total, rel_tol=1e-6)
