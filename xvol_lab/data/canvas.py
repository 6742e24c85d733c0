"""Drawing primitives of the synthetic datasets: shape masks, cluttered backgrounds, distractor blobs.

Images are float arrays (H, W, 3) in [0, 1] until `to_uint8`; every random choice comes from the
`numpy.random.Generator` passed in, so an image is a pure function of its generator's seed.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "ellipse", "diamond",
          "semicircle", "hourglass")
MAX_ANGLE = 20.0  # degrees; small enough that a square never turns into a diamond
SUPERSAMPLE = 4  # masks are drawn at 4x and box-filtered down (anti-aliased edges)

Polygon = tuple[np.ndarray, int]  # (points (N, 2) in units of the radius, fill 255 = shape or 0 = hole)


def _ngon(n: int, rx: float = 1.0, ry: float = 1.0, start: float = 0.0,
          stop: float = 2 * np.pi) -> np.ndarray:
    t = np.linspace(start, stop, n, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    t = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _box(hx: float, hy: float) -> np.ndarray:
    return np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])


# Unit geometry (radius 1, centred at the origin, y pointing down), drawn in order.
GEOMETRY: dict[str, list[Polygon]] = {
    "circle": [(_ngon(48), 255)],
    "square": [(_box(0.8, 0.8), 255)],
    "triangle": [(_ngon(3, start=-np.pi / 2, stop=1.5 * np.pi), 255)],
    "cross": [(_box(1.0, 0.3), 255), (_box(0.3, 1.0), 255)],
    "ring": [(_ngon(48), 255), (_ngon(48, 0.55, 0.55), 0)],
    "star": [(_star(), 255)],
    "ellipse": [(_ngon(48, 1.0, 0.5), 255)],
    "diamond": [(np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]]), 255)],
    "semicircle": [(np.vstack([_ngon(24, start=np.pi, stop=2 * np.pi), [[1.0, 0.0]]]) + [0.0, 0.4], 255)],
    "hourglass": [(np.array([[-0.8, -1.0], [0.8, -1.0], [0.0, 0.0]]), 255),
                  (np.array([[-0.8, 1.0], [0.8, 1.0], [0.0, 0.0]]), 255)],
}
# The shapes drawn without a hole: their outline is a list of polygons (COCO's segmentation format).
HOLE_FREE_SHAPES = tuple(s for s in SHAPES if all(fill == 255 for _, fill in GEOMETRY[s]))


@dataclass(frozen=True)
class Placement:
    """One shape drawn in an image: centre (x, y) and radius in pixels, angle in degrees, RGB in [0, 1]."""

    shape: str
    x: float
    y: float
    radius: float
    angle: float
    color: tuple[float, float, float]

    def meta(self, prefix: str = "") -> dict[str, float | str]:
        """Flat metadata for the index file."""
        r, g, b = self.color
        values = {"shape": self.shape, "x": self.x, "y": self.y, "radius": self.radius,
                  "angle": self.angle, "r": r, "g": g, "b": b}
        return {prefix + k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}


def shape_mask(p: Placement, size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) in [0, 1] of the shape described by `p`."""
    theta = np.deg2rad(p.angle)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    canvas = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for points, fill in GEOMETRY[p.shape]:
        xy = (points @ rot.T * p.radius + [p.x, p.y]) * SUPERSAMPLE  # (N, 2) pixel coordinates
        draw.polygon([tuple(q) for q in xy.tolist()], fill=fill)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    """RGB in [0, 1] of a hue (wrapped to [0, 1)), saturation and value."""
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dim, low-saturation colour field with random clutter lines and pixel noise."""
    grid = int(rng.integers(2, 6))
    field = np.array([hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.45))
                      for _ in range(grid * grid)]).reshape(grid, grid, 3)
    img = Image.fromarray((field * 255).round().astype(np.uint8)).resize((size, size),
                                                                         Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        ends = rng.uniform(0, size, 4).tolist()
        color = tuple(int(c * 255) for c in hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.05, 0.5)))
        draw.line(ends, fill=color, width=1)
    out = np.asarray(img, dtype=np.float32) / 255.0
    return out + rng.normal(0.0, 0.03, out.shape).astype(np.float32)


def add_blobs(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    """Paint `count` soft Gaussian blobs (distractors without edges) into `img` in place."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(count):
        cx, cy = rng.uniform(0, size, 2)
        sigma = rng.uniform(0.03, 0.07) * size
        alpha = rng.uniform(0.5, 0.9) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        color = np.array(hsv(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.4, 1.0)), np.float32)
        img *= 1 - alpha[..., None]
        img += alpha[..., None] * color


def paint(rng: np.random.Generator, img: np.ndarray, p: Placement) -> None:
    """Paint the shape `p` into `img` in place, its colour perturbed by per-pixel noise."""
    alpha = shape_mask(p, img.shape[0])[..., None]
    color = np.asarray(p.color, np.float32) + rng.normal(0.0, 0.04, img.shape).astype(np.float32)
    img *= 1 - alpha
    img += alpha * color


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)
