"""The synthetic generators: determinism, balance, and labels that agree with what is drawn."""

import colorsys
import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xvol_lab.data import DataConfig, generate
from xvol_lab.data.canvas import SHAPES, Placement, shape_mask
from xvol_lab.data.shapes import class_names as shape_classes


def small(root: Path, name: str = "shapes", **changes) -> DataConfig:
    fields = {"name": name, "root": str(root), "num_train": 40, "num_val": 20, "num_workers": 0} | changes
    return DataConfig(**fields)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def index_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["shapes", "shapes-context", "shapes-side"])
def test_same_seed_gives_byte_identical_files(tmp_path, name):
    a = files(generate(small(tmp_path / "a", name)))
    b = files(generate(small(tmp_path / "b", name)))
    assert len([k for k in a if k.endswith(".png")]) == 60
    assert a == b
    c = files(generate(small(tmp_path / "c", name, seed=1)))
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in pngs) == len(pngs)


def test_val_images_do_not_depend_on_train_size(tmp_path):
    a = files(generate(small(tmp_path, num_train=20)))
    b = files(generate(small(tmp_path, num_train=40)))
    val = [k for k in a if k.startswith("val/")]
    assert len(val) == 20 and all(a[k] == b[k] for k in val)


def test_folder_name_carries_the_parameters(tmp_path):
    folder = generate(small(tmp_path, "shapes-context", num_classes=2, image_size=48, seed=3))
    assert folder == tmp_path / "shapes-context" / "c2-s48-n40-v20-seed3"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["params"] == {"num_classes": 2, "image_size": 48, "num_train": 40, "num_val": 20,
                                  "seed": 3}
    assert manifest["classes"] == ["00-match", "01-offset1"]
    assert manifest["counts"] == {"train": 40, "val": 20}
    with Image.open(next(folder.rglob("*.png"))) as img:
        assert img.size == (48, 48) and img.mode == "RGB"


def test_classes_are_balanced_and_files_sit_in_their_class_folder(tmp_path):
    cfg = small(tmp_path, num_classes=4, num_train=42, num_val=8)
    folder = generate(cfg)
    rows = index_rows(folder)
    classes = shape_classes(4)
    assert classes == ["00-circle", "01-square", "02-triangle", "03-cross"]
    for split, n in (("train", 42), ("val", 8)):
        counts = Counter(int(r["label"]) for r in rows if r["split"] == split)
        assert sum(counts.values()) == n and set(counts) == {0, 1, 2, 3}
        assert max(counts.values()) - min(counts.values()) <= 1
    for r in rows:
        assert Path(r["path"]).parts[:2] == (r["split"], classes[int(r["label"])])
        assert (folder / r["path"]).is_file()


def test_shapes_labels_match_the_drawn_shape(tmp_path):
    folder = generate(small(tmp_path, num_train=30, num_val=10))
    for r in index_rows(folder):
        label = int(r["label"])
        assert r["shape"] == SHAPES[label] and int(r["kind"]) == label
        p = Placement(r["shape"], float(r["x"]), float(r["y"]), float(r["radius"]), float(r["angle"]),
                      (float(r["r"]), float(r["g"]), float(r["b"])))
        inside = shape_mask(p, 32) > 0.999
        assert inside.sum() > 10  # the shape is large enough to see
        pixels = np.asarray(Image.open(folder / r["path"]), dtype=np.float64)[inside] / 255
        # the recorded colour is what is painted inside the recorded outline (up to pixel noise)
        assert np.abs(pixels.mean(0) - p.color).max() < 0.03


def test_more_classes_than_shapes_split_the_hue_circle(tmp_path):
    folder = generate(small(tmp_path, num_classes=12, num_train=48, num_val=12))
    assert shape_classes(12)[9:] == ["09-hourglass-hue0", "10-circle-hue1", "11-square-hue1"]
    for r in index_rows(folder):
        hue = colorsys.rgb_to_hsv(float(r["r"]), float(r["g"]), float(r["b"]))[0]
        band = int(r["label"]) // 10
        assert r["shape"] == SHAPES[int(r["label"]) % 10]
        assert band / 2 - 0.01 <= hue <= (band + 1) / 2 + 0.01


def test_two_thousand_images_generate_in_seconds(tmp_path):
    start = time.perf_counter()
    generate(small(tmp_path, num_train=2000, num_val=10))
    assert time.perf_counter() - start < 15  # ~2-4 s; generous for a shared CI machine


def test_a_small_generated_set_is_decoded_once_into_the_tensors_a_file_gives(tmp_path, monkeypatch):
    from xvol_lab.data import synthetic
    from xvol_lab.data.build import build_datamodule
    from xvol_lab.data.generated import read_generated
    from xvol_lab.data.images import DecodedImageDataset, ImageListDataset
    from xvol_lab.data.transforms import to_uint8

    cfg = small(tmp_path, "shapes-side", image_size=32)
    generate(cfg)
    held = build_datamodule(cfg)
    held.setup("fit")
    assert isinstance(held.train_set, DecodedImageDataset) and isinstance(held.val_set, DecodedImageDataset)
    samples = read_generated(cfg).samples
    for split, dataset in (("train", held.train_set), ("val", held.val_set)):
        from_files = ImageListDataset(samples[split], to_uint8())
        assert len(dataset) == len(from_files) and dataset.targets == from_files.targets
        for i in range(len(dataset)):
            image, label = dataset[i]
            expected, expected_label = from_files[i]
            assert label == expected_label and image.dtype == torch.uint8 and image.shape == (3, 32, 32)
            assert torch.equal(image, expected)
    monkeypatch.setattr(synthetic, "IN_MEMORY_MIB", 0.1)  # 60 images of 32 px are 0.18 MiB decoded
    on_access = build_datamodule(cfg)
    on_access.setup("fit")
    assert isinstance(on_access.train_set, ImageListDataset)


def test_an_image_of_another_size_in_a_held_set_names_the_file(tmp_path):
    from xvol_lab.data.generated import read_generated
    from xvol_lab.data.images import DecodedImageDataset
    from xvol_lab.errors import ConfigError

    cfg = small(tmp_path, image_size=32)
    generate(cfg)
    samples = read_generated(cfg).samples["val"]
    odd = samples[3][0]
    Image.new("RGB", (31, 32)).save(odd)
    with pytest.raises(ConfigError) as err:
        DecodedImageDataset(samples)
    assert str(err.value) == f"{odd}: image of 31x32 px, expected 32x32 as the other images of its set"


def test_the_decoded_array_is_kept_beside_the_set_and_read_back_without_decoding(tmp_path, monkeypatch):
    from xvol_lab.data import images as images_module
    from xvol_lab.data.decoded import CACHE_DIR
    from xvol_lab.data.generated import read_generated
    from xvol_lab.data.images import DecodedImageDataset

    cfg = small(tmp_path, "shapes-side", image_size=32)
    folder = generate(cfg)
    samples = read_generated(cfg).samples["train"]
    first = DecodedImageDataset(samples, cache=folder)
    (kept,) = (folder / CACHE_DIR).iterdir()
    assert kept.suffix == ".npy" and kept.stat().st_mode & 0o777 == 0o644  # umask 022 in the suite

    def no_decoding(path):
        raise AssertionError(f"{path} decoded although the set's array is kept")

    monkeypatch.setattr(images_module, "load_rgb", no_decoding)
    second = DecodedImageDataset(samples, cache=folder)
    assert torch.equal(second.images, first.images) and second.targets == first.targets
    assert second.images.shape == (40, 3, 32, 32)


def test_an_image_rewritten_in_place_is_decoded_again_not_read_from_the_kept_array(tmp_path):
    import os

    from xvol_lab.data.decoded import CACHE_DIR
    from xvol_lab.data.generated import read_generated
    from xvol_lab.data.images import DecodedImageDataset

    cfg = small(tmp_path, image_size=32)
    folder = generate(cfg)
    samples = read_generated(cfg).samples["val"]
    before = DecodedImageDataset(samples, cache=folder)
    path = samples[5][0]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    os.utime(path, ns=(1, 1))  # another modification time even where the clock is coarse
    after = DecodedImageDataset(samples, cache=folder)
    assert torch.equal(after.images[5], torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32))
    assert torch.equal(after.images[:5], before.images[:5]) and not torch.equal(after.images[5], before.images[5])
    assert len(list((folder / CACHE_DIR).iterdir())) == 2


def test_a_set_whose_folder_cannot_be_written_is_decoded_all_the_same(tmp_path):
    from xvol_lab.data.decoded import CACHE_DIR
    from xvol_lab.data.generated import read_generated
    from xvol_lab.data.images import DecodedImageDataset

    cfg = small(tmp_path, image_size=32)
    folder = generate(cfg)
    samples = read_generated(cfg).samples["val"]
    (folder / CACHE_DIR).write_text("a file where the cache folder would be")
    dataset = DecodedImageDataset(samples, cache=folder)
    assert dataset.images.shape == (20, 3, 32, 32)
    first = np.array(Image.open(samples[0][0]).convert("RGB"))
    assert torch.equal(dataset.images[0], torch.from_numpy(first).permute(2, 0, 1))
