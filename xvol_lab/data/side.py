"""`shapes-side`: two discs far apart vertically; the class is how far, and to which side, the lower
disc lies from the upper one.

The lower disc *b* is offset horizontally from the upper disc *a* by ``dx``, uniform in
``[-OFFSET, OFFSET] * image_size``; with K classes that interval is cut into K equal bins and the
class is the bin (K = 2: `left` / `right`). A graded label: the nearer ``dx`` is to a bin's edge,
the finer the comparison of the two discs' positions must be, so accuracy grows with a network's
precision instead of jumping from chance to perfect (`shapes-context`'s same/different does).

The discs' outlines are at least ``GAP * image_size`` apart vertically (`context.relation_gap`):
26 px at the 40 px the ablations use, beyond the 25 px receptive field of stage 2 of the small-stem
ResNet-18, so a unit has to see both to read the offset. The discs are smaller than
`shapes-context`'s, so that this gap fits down to 32 px. Each disc's hue and size are uniform
whatever the label; the pair's midpoint is uniform, so a disc's own position carries only what the
bounded canvas leaks (``|dx| / 2`` of shift at most; the ablations' positive control measures it).
data/README.md says why it is built so.
"""

from __future__ import annotations

import numpy as np

from xvol_lab.data.canvas import MAX_ANGLE, Placement, background, hsv, paint, to_uint8
from xvol_lab.data.context import EXTENT, SHAPE, relation_gap

VERSION = 1

RADIUS = (0.06, 0.075)  # disc radius, as a fraction of the image side
GAP = 0.65  # smallest vertical gap between the two discs' outlines, as a fraction of the side
OFFSET = 0.25  # the largest |dx|, as a fraction of the image side


def class_names(num_classes: int) -> list[str]:
    """'00-left', '01-right' for two classes, else '00-bin0', '01-bin1', ... from left to right."""
    if num_classes == 2:
        return ["00-left", "01-right"]
    return [f"{k:02d}-bin{k}" for k in range(num_classes)]


def offset(rng: np.random.Generator, label: int, num_classes: int, size: int) -> float:
    """dx of class `label`: uniform in its bin of ``[-OFFSET, OFFSET] * size``."""
    return (-1.0 + 2.0 * (label + rng.random()) / num_classes) * OFFSET * size


def _centres(rng: np.random.Generator, dx: float, margin: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the upper and the lower disc: outlines GAP * size apart vertically, b = a + dx across."""
    span = GAP * size + 2 * margin  # the least vertical distance between the centres
    ya = rng.uniform(margin, size - margin - span)
    yb = rng.uniform(ya + span, size - margin)
    mid = rng.uniform(margin + abs(dx) / 2, size - margin - abs(dx) / 2)
    return np.array([mid - dx / 2, ya]), np.array([mid + dx / 2, yb])


def draw(rng: np.random.Generator, label: int, num_classes: int, size: int) -> tuple[np.ndarray, dict]:
    """One (size, size, 3) uint8 image of class `label` and its metadata."""
    img = background(rng, size)
    dx = offset(rng, label, num_classes, size)
    margin = EXTENT * RADIUS[1] * size  # the largest radius: every drawn disc fits
    meta: dict = {"dx": round(dx, 4)}
    placements = []
    for prefix, (x, y) in zip(("a_", "b_"), _centres(rng, dx, margin, size), strict=True):
        p = Placement(shape=SHAPE, x=float(x), y=float(y), radius=float(rng.uniform(*RADIUS) * size),
                      angle=float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)),
                      color=hsv(rng.random(), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)))
        paint(rng, img, p)
        placements.append(p)
        meta.update(p.meta(prefix))
    meta["gap"] = round(relation_gap(*placements), 4)
    return to_uint8(img), meta
