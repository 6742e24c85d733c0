"""`shapes-context`: two shapes in opposite corners; the class relates the two.

With K classes, the top shape has kind a and the bottom shape kind b = (a + label) mod K, both
drawn from the `shapes` kinds: label 0 means the two match, label k means b is k kinds after a.
Kind a is uniform and independent of the label, and so is kind b, so one corner alone tells
nothing about the class: an operator has to relate both corners (K = 2 is same/different).
The diagonal (top-left/bottom-right or top-right/bottom-left) is random.
"""

from __future__ import annotations

import numpy as np

from xvol_lab.data.canvas import add_blobs, background, paint, to_uint8
from xvol_lab.data.shapes import place

VERSION = 1


def class_names(num_classes: int) -> list[str]:
    """'00-match', '01-offset1', ...: the index prefix keeps folder order equal to label order."""
    return [f"{k:02d}-" + ("match" if k == 0 else f"offset{k}") for k in range(num_classes)]


def draw(rng: np.random.Generator, label: int, num_classes: int, size: int) -> tuple[np.ndarray, dict]:
    """One (size, size, 3) uint8 image of class `label` and its metadata."""
    img = background(rng, size)
    add_blobs(rng, img, int(rng.integers(1, 4)))
    kind_a = int(rng.integers(num_classes))
    kind_b = (kind_a + label) % num_classes
    anti = bool(rng.integers(2))  # False: top-left + bottom-right, True: top-right + bottom-left
    half = size / 2
    meta: dict = {"kind_a": kind_a, "kind_b": kind_b, "diagonal": "anti" if anti else "main"}
    for prefix, kind, top in (("a_", kind_a, True), ("b_", kind_b, False)):
        radius = rng.uniform(0.13, 0.2) * size
        left = top != anti
        xs = (radius, half - radius) if left else (half + radius, size - radius)
        ys = (radius, half - radius) if top else (half + radius, size - radius)
        p = place(rng, kind, num_classes, radius, xs, ys)
        paint(rng, img, p)
        meta.update(p.meta(prefix))
    return to_uint8(img), meta
