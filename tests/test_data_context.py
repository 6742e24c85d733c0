"""`shapes-context`: labels from the two hues, balance, a label no single shape decides, and a
relation distance beyond the receptive field of stages 1-2 (measured here, on the network itself)."""

import colorsys
import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _receptive import effective_receptive_field, inside_image, pixel_gap, placement, receptive_field, study_data
from scipy.stats import chi2_contingency

from xvol_lab.data import DataConfig, generate
from xvol_lab.data.canvas import shape_mask
from xvol_lab.data.context import GAP, class_names, draw


def proxy_size() -> int:
    """The image size the shipped one_shot_search study trains the proxy at."""
    data = study_data("one_shot_search")
    assert data["name"] == "shapes-context"
    return int(data["image_size"])


def draws(n: int, num_classes: int, size: int, seed: int = 0) -> list[tuple[int, np.ndarray, dict]]:
    return [(i % num_classes, *draw(np.random.default_rng([seed, i]), i % num_classes, num_classes, size))
            for i in range(n)]


def test_receptive_field_of_the_small_stem_resnet18_is_measured_not_assumed():
    # 3x3 stem, then 4 convs at stride 1 (stage 1), a stride-2 conv and 3 more at stride 2 (stage 2)
    assert receptive_field(48, 1) == 3 + 4 * 2
    assert receptive_field(48, 2) == 11 + 2 + 3 * 4


def test_effective_receptive_fields_are_smaller_and_documented():
    # the figures in data/README.md ("The long-range proxy")
    effective = [effective_receptive_field(48, stage) for stage in (1, 2, 3)]
    assert effective == pytest.approx([10.0, 18.0, 34.0], abs=1.0)
    assert all(e < receptive_field(48, stage) for e, stage in zip(effective, (1, 2, 3), strict=True))


def test_no_stage2_unit_sees_both_shapes_at_the_proxy_size():
    size = proxy_size()
    rf = receptive_field(size, 2)
    assert rf < size  # otherwise the claim below would be vacuous
    metas = [meta for _, _, meta in draws(150, 2, size)]
    gaps = [pixel_gap(placement(meta, "a_"), placement(meta, "b_"), size) for meta in metas]
    # a window of rf x rf pixels holds two pixels only if they are < rf apart (Chebyshev)
    assert min(gaps) >= rf
    assert min(meta["gap"] for meta in metas) >= rf  # the recorded relation distance agrees


def test_label_is_the_hue_offset_and_the_painted_hues_agree():
    k = 4
    assert class_names(k) == ["00-match", "01-offset1", "02-offset2", "03-offset3"]
    for label, image, meta in draws(80, k, 48):
        assert label == (meta["hue_b"] - meta["hue_a"]) % k
        assert meta["a_y"] <= meta["b_y"]  # a is the upper shape
        for prefix, hue in (("a_", meta["hue_a"]), ("b_", meta["hue_b"])):
            p = placement(meta, prefix)
            inside = shape_mask(p, 48) > 0.999
            painted = image[inside].astype(np.float64).mean(0) / 255
            assert np.abs(painted - p.color).max() < 0.08  # the recorded colour (few pixels, clipped noise)
            h = colorsys.rgb_to_hsv(*p.color)[0] * k
            assert min(abs(h - hue), k - abs(h - hue)) <= 0.15 + 1e-6  # within the hue's jitter band


def test_no_single_shape_decides_the_label():
    k, size = 4, 32
    samples = draws(800, k, size)
    assert Counter(label for label, _, _ in samples) == {c: 200 for c in range(k)}

    def quadrant(meta: dict, prefix: str) -> int:
        return 2 * (meta[prefix + "y"] > size / 2) + (meta[prefix + "x"] > size / 2)
    features = {"hue_a": lambda m: m["hue_a"], "hue_b": lambda m: m["hue_b"],
                "a_quadrant": lambda m: quadrant(m, "a_"), "b_quadrant": lambda m: quadrant(m, "b_"),
                "a_large": lambda m: m["a_radius"] > 0.0825 * size,
                "b_large": lambda m: m["b_radius"] > 0.0825 * size}
    for name, feature in features.items():
        table = Counter((label, feature(meta)) for label, _, meta in samples)
        values = sorted({v for _, v in table})
        assert len(values) > 1, name
        counts = np.array([[table[(label, v)] for v in values] for label in range(k)])
        assert chi2_contingency(counts).pvalue > 0.001, name  # independent of the label
    # the hue pair decides it exactly
    assert all(label == (m["hue_b"] - m["hue_a"]) % k for label, _, m in samples)


def test_dataset_on_disk_is_balanced_and_deterministic(tmp_path):
    def make(root: Path) -> Path:
        return generate(DataConfig(name="shapes-context", root=str(root), num_classes=2, image_size=48,
                                   num_train=30, num_val=10, num_workers=0))
    a, b = make(tmp_path / "a"), make(tmp_path / "b")
    with open(a / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for split, n in (("train", 30), ("val", 10)):
        assert Counter(r["label"] for r in rows if r["split"] == split) == {"0": n // 2, "1": n // 2}
    assert all((r["hue_a"] == r["hue_b"]) == (r["label"] == "0") for r in rows)
    pngs = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(pngs) == 40 and all((a / p).read_bytes() == (b / p).read_bytes() for p in pngs)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_shapes_stay_inside_the_image_and_apart_at_every_size(size):
    for _, _, meta in draws(40, 2, size, seed=1):
        assert inside_image(placement(meta, "a_"), size) and inside_image(placement(meta, "b_"), size)
        assert meta["gap"] >= GAP * size - 1e-3
