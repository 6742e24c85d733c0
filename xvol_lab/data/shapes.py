"""`shapes`: one shape per image on a cluttered background; the class is the shape's kind.

Kind k is shape ``SHAPES[k % 10]`` in hue band ``k // 10``: up to 10 classes differ by shape alone
(any hue); beyond that the hue circle is split into bands, so a circle in band 0 and a circle in
band 1 are two classes. Position, size, rotation, colour noise, background clutter and distractor
blobs are random.
"""

from __future__ import annotations

import math

import numpy as np

from xvol_lab.data.canvas import MAX_ANGLE, SHAPES, Placement, add_blobs, background, hsv, paint, to_uint8

VERSION = 1


def kind_name(kind: int, num_kinds: int) -> str:
    """'circle' or, when there are more kinds than shapes, 'circle-hue1'."""
    shape = SHAPES[kind % len(SHAPES)]
    return shape if num_kinds <= len(SHAPES) else f"{shape}-hue{kind // len(SHAPES)}"


def place(rng: np.random.Generator, kind: int, num_kinds: int, radius: float,
          xs: tuple[float, float], ys: tuple[float, float]) -> Placement:
    """A random placement of `kind` with centre uniform in the ranges `xs` x `ys`."""
    bands = math.ceil(num_kinds / len(SHAPES))
    hue = (kind // len(SHAPES) + rng.random()) / bands
    color = hsv(hue, rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0))
    return Placement(shape=SHAPES[kind % len(SHAPES)], x=float(rng.uniform(*xs)), y=float(rng.uniform(*ys)),
                     radius=float(radius), angle=float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)), color=color)


def class_names(num_classes: int) -> list[str]:
    """'00-circle', '01-square', ...: the index prefix keeps folder order equal to label order."""
    return [f"{k:02d}-{kind_name(k, num_classes)}" for k in range(num_classes)]


def draw(rng: np.random.Generator, label: int, num_classes: int, size: int) -> tuple[np.ndarray, dict]:
    """One (size, size, 3) uint8 image of class `label` and its metadata."""
    img = background(rng, size)
    add_blobs(rng, img, int(rng.integers(1, 4)))
    radius = rng.uniform(0.18, 0.32) * size
    p = place(rng, label, num_classes, radius, (radius, size - radius), (radius, size - radius))
    paint(rng, img, p)
    return to_uint8(img), {"kind": label, **p.meta()}
