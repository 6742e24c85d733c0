"""`shapes-side`: the label is the bin of the lower disc's horizontal offset, the discs are farther
apart than any stage-2 unit sees (measured on the network), and one disc alone says almost nothing
about the label."""

import csv
from collections import Counter

import numpy as np
import pytest
from _receptive import (
    inside_image,
    pixel_gap,
    placement,
    positive_control_spec,
    receptive_field,
    study_data,
    study_spec,
)
from scipy.stats import chi2_contingency

from xvol_lab.data import DataConfig, generate
from xvol_lab.data.canvas import shape_mask
from xvol_lab.data.side import GAP, OFFSET, RADIUS, class_names, draw


def proxy() -> tuple[int, int]:
    """(image size, classes) the shipped op_ablation study trains `shapes-side` at."""
    data = study_data("op_ablation")
    assert data["name"] == "shapes-side"
    return int(data["image_size"]), int(data["num_classes"])


def draws(n: int, num_classes: int, size: int, seed: int = 0) -> list[tuple[int, np.ndarray, dict]]:
    return [(i % num_classes, *draw(np.random.default_rng([seed, i]), i % num_classes, num_classes, size))
            for i in range(n)]


def test_label_is_the_bin_of_the_lower_discs_offset():
    assert class_names(2) == ["00-left", "01-right"]
    assert class_names(4) == ["00-bin0", "01-bin1", "02-bin2", "03-bin3"]
    k, size = 16, 40
    width = 2 * OFFSET * size / k  # 1.25 px
    for label, image, meta in draws(96, k, size):
        dx = meta["b_x"] - meta["a_x"]
        assert dx == pytest.approx(meta["dx"], abs=1e-3)
        assert -OFFSET * size + label * width <= dx <= -OFFSET * size + (label + 1) * width
        assert meta["a_y"] < meta["b_y"]  # a is the upper disc
        for prefix in ("a_", "b_"):
            p = placement(meta, prefix)
            inside = shape_mask(p, size) > 0.999
            painted = image[inside].astype(np.float64).mean(0) / 255
            assert np.abs(painted - p.color).max() < 0.08  # the disc is where the metadata says


def test_no_stage2_unit_sees_both_discs_at_the_study_size():
    size, k = proxy()
    rf = receptive_field(size, 2, study_spec("op_ablation"))  # the network the study trains
    assert rf < size  # otherwise the claim below would be vacuous
    metas = [meta for _, _, meta in draws(150, k, size)]
    gaps = [pixel_gap(placement(meta, "a_"), placement(meta, "b_"), size) for meta in metas]
    assert min(gaps) >= rf  # a window of rf x rf pixels holds two pixels only if they are < rf apart
    assert min(meta["gap"] for meta in metas) >= rf


def test_no_unit_of_the_positive_control_sees_both_discs():
    # op_ablation's positive control mixes no pixels after stage 2: its last stage's units see what
    # one stage-2 unit sees, less than the discs' smallest distance (the test above)
    spec, base = positive_control_spec("op_ablation"), study_spec("op_ablation")
    assert all(stage.op == "pointwise" for stage in spec.stages[2:])
    size, _ = proxy()
    assert receptive_field(size, 4, spec) == receptive_field(size, 3, spec) == receptive_field(size, 2, base) == 25
    assert receptive_field(size, 4, base) == size  # the all-conv network's stage 4 sees the whole image


def test_one_disc_alone_says_almost_nothing_about_the_label():
    k, size = 16, 40
    samples = draws(1600, k, size)
    assert Counter(label for label, _, _ in samples) == {c: 100 for c in range(k)}
    features = {f"{p}{name}": (lambda m, p=p, name=name, cut=cut: int(m[p + name] > cut))
                for p in ("a_", "b_") for name, cut in (("radius", sum(RADIUS) / 2 * size), ("r", 0.5), ("g", 0.5))}
    for name, feature in features.items():  # size and colour: independent of the label
        table = Counter((label, feature(meta)) for label, _, meta in samples)
        counts = np.array([[table[(label, v)] for v in (0, 1)] for label in range(k)])
        assert counts.min() > 0 and chi2_contingency(counts).pvalue > 0.001, name
    # position: the canvas's edges leak a little (a pair offset far to the right cannot start at the
    # right edge). The best rule from one disc's x (12 bins, fitted on half, scored on the other
    # half) stays near chance, far below what the networks reach (data/README.md).
    half = len(samples) // 2
    for prefix in ("a_", "b_"):
        labels = np.array([label for label, _, _ in samples])
        bins = np.digitize([meta[prefix + "x"] for _, _, meta in samples], np.linspace(0, size, 13))
        rule = {b: np.bincount(labels[:half][bins[:half] == b], minlength=k).argmax() for b in set(bins[:half])}
        accuracy = np.mean([rule.get(b, 0) == y for b, y in zip(bins[half:], labels[half:], strict=True)])
        assert accuracy < 0.12, prefix  # chance 0.0625


def test_dataset_on_disk_is_balanced_with_a_folder_per_bin(tmp_path):
    # byte-identical regeneration: tests/test_data_generator.py, for every synthetic set
    folder = generate(DataConfig(name="shapes-side", root=str(tmp_path), num_classes=4, image_size=40,
                                 num_train=32, num_val=8, num_workers=0))
    with open(folder / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for split, n in (("train", 32), ("val", 8)):
        assert Counter(r["label"] for r in rows if r["split"] == split) == {str(c): n // 4 for c in range(4)}
        assert sorted(p.name for p in (folder / split).iterdir()) == class_names(4)


@pytest.mark.parametrize("size", [32, 40, 64])
def test_discs_stay_inside_the_image_and_apart_at_every_size(size):
    for _, _, meta in draws(40, 16, size, seed=1):
        assert inside_image(placement(meta, "a_"), size) and inside_image(placement(meta, "b_"), size)
        assert meta["gap"] >= GAP * size - 1e-3
