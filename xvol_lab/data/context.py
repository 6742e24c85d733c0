"""`shapes-context`: two discs far apart; the class is the hue offset between them.

With K classes the hue circle holds K evenly spaced hues. Disc *a* (the upper one) has hue index
a, uniform; disc *b* has hue index (a + label) mod K. Label 0 (`match`) means both have the same
hue, label k (`offset{k}`) that b's hue is k steps after a's; K = 2 is same/different colour.
Each disc's hue alone is uniform whatever the label, so one disc tells nothing about the class:
a network has to relate both (the linear head after global average pooling cannot do it from
pooled colour statistics either: "same" is an XOR-like function of where each hue occurs).

The two discs are placed at random, but always at least ``GAP * image_size`` pixels apart
(Chebyshev distance between their outlines; `relation_gap`): at 48 px that is 26 px, more than
the 25 px theoretical receptive field of stage 2 of the small-stem ResNet-18, so no unit of
stages 1-2 sees both. Position, size, colour noise and background clutter are nuisances
independent of the label (no distractor blobs: coloured blobs of the discs' size would be decoys
of the very attribute compared). data/README.md says why it is built so.
"""

from __future__ import annotations

import numpy as np

from xvol_lab.data.canvas import GEOMETRY, MAX_ANGLE, Placement, background, hsv, paint, to_uint8

VERSION = 3

RADIUS = (0.075, 0.09)  # disc radius, as a fraction of the image side
GAP = 0.545  # smallest Chebyshev gap between the two discs' outlines, as a fraction of the side
HUE_JITTER = 0.3  # each hue is drawn within +-HUE_JITTER/2 of a step of the K-hue circle
SHAPE = "circle"  # discs: the most colour for the room they take
# How far the shape reaches from its centre, in units of its radius.
EXTENT = max(float(np.linalg.norm(points, axis=1).max()) for points, _ in GEOMETRY[SHAPE])


def class_names(num_classes: int) -> list[str]:
    """'00-match', '01-offset1', ...: the index prefix keeps folder order equal to label order."""
    return [f"{k:02d}-" + ("match" if k == 0 else f"offset{k}") for k in range(num_classes)]


def relation_gap(a: Placement, b: Placement) -> float:
    """Chebyshev distance in pixels between the discs (radius x EXTENT) that hold the two shapes."""
    centre = max(abs(a.x - b.x), abs(a.y - b.y))
    return centre - EXTENT * (a.radius + b.radius)


def _centres(rng: np.random.Generator, radius: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two centres uniform in the image whose shapes are at least GAP * size apart (rejection sampling)."""
    margin = EXTENT * radius
    while True:
        a, b = rng.uniform(margin, size - margin, (2, 2))
        if max(abs(a - b)) - 2 * margin >= GAP * size:
            return (a, b) if (a[1], a[0]) <= (b[1], b[0]) else (b, a)  # a is the upper one


def draw(rng: np.random.Generator, label: int, num_classes: int, size: int) -> tuple[np.ndarray, dict]:
    """One (size, size, 3) uint8 image of class `label` and its metadata."""
    img = background(rng, size)  # no distractor blobs: coloured blobs of the shapes' size would be decoys
    hue_a = int(rng.integers(num_classes))
    hue_b = (hue_a + label) % num_classes
    radius = RADIUS[1] * size  # the largest radius: every drawn shape fits its disc
    centres = _centres(rng, radius, size)
    meta: dict = {"hue_a": hue_a, "hue_b": hue_b}
    placements = []
    for prefix, hue, (x, y) in (("a_", hue_a, centres[0]), ("b_", hue_b, centres[1])):
        h = (hue + rng.uniform(-HUE_JITTER / 2, HUE_JITTER / 2)) / num_classes
        p = Placement(shape=SHAPE, x=float(x), y=float(y),
                      radius=float(rng.uniform(*RADIUS) * size),
                      angle=float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)),
                      color=hsv(h, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)))
        paint(rng, img, p)
        placements.append(p)
        meta.update(p.meta(prefix))
    meta["gap"] = round(relation_gap(*placements), 4)
    return to_uint8(img), meta
