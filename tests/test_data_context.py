"""`shapes-context`: labels from the two hues, balance, a label no single shape decides, and a
relation distance beyond the receptive field of stages 1-2 (measured here, on the network itself)."""

import colorsys
import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import chi2_contingency

from xvol_lab.data import DataConfig, generate
from xvol_lab.data.canvas import Placement, shape_mask
from xvol_lab.data.context import GAP, class_names, draw
from xvol_lab.models.backbone import build_backbone
from xvol_lab.models.spec import BackboneSpec

REPO = Path(__file__).resolve().parents[1]


def proxy_size() -> int:
    """The image size the shipped op_ablation study trains the proxy at."""
    study = yaml.safe_load((REPO / "studies" / "op_ablation.yaml").read_text())
    assert study["base"]["data"]["name"] == "shapes-context"
    return int(study["base"]["data"]["image_size"])


def draws(n: int, num_classes: int, size: int, seed: int = 0) -> list[tuple[int, np.ndarray, dict]]:
    return [(i % num_classes, *draw(np.random.default_rng([seed, i]), i % num_classes, num_classes, size))
            for i in range(n)]


def placement(meta: dict, prefix: str) -> Placement:
    return Placement(meta[prefix + "shape"], float(meta[prefix + "x"]), float(meta[prefix + "y"]),
                     float(meta[prefix + "radius"]), float(meta[prefix + "angle"]),
                     tuple(float(meta[prefix + c]) for c in "rgb"))


SMALL_STEM = BackboneSpec(depths=(2, 2, 2, 2), width_mult=0.25, stem="small")


def positive_control_spec() -> BackboneSpec:
    """The small-stem ResNet-18 with the stage changes of op_ablation's positive control."""
    study = yaml.safe_load((REPO / "studies" / "op_ablation.yaml").read_text())
    spec = SMALL_STEM
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


def test_no_unit_of_the_positive_control_sees_both_discs():
    # op_ablation's positive control mixes no pixels after stage 2: its last stage's units see what
    # one stage-2 unit sees, less than the discs' smallest distance (the test above)
    spec = positive_control_spec()
    assert all(stage.op == "pointwise" for stage in spec.stages[2:])
    size = proxy_size()
    assert receptive_field(size, 4, spec) == receptive_field(size, 3, spec) == receptive_field(size, 2) == 25
    assert receptive_field(size, 4) == size  # the all-conv network's stage 4 sees the whole image


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
    pad = size // 4
    for _, _, meta in draws(40, 2, size, seed=1):
        for prefix in ("a_", "b_"):
            p = placement(meta, prefix)
            # drawn on a canvas with a margin around the image, nothing lands in the margin
            shifted = Placement(p.shape, p.x + pad, p.y + pad, p.radius, p.angle, p.color)
            padded = shape_mask(shifted, size + 2 * pad)
            assert padded.sum() > 0 and padded[pad:-pad, pad:-pad].sum() == pytest.approx(padded.sum())
        assert meta["gap"] >= GAP * size - 1e-3
