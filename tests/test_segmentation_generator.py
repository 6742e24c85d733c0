"""shapes-seg: deterministic, masks that agree with the drawn shapes, atomic, safe for concurrent callers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _helpers import writes_by_concurrent_callers
from PIL import Image

from xvol_lab.data import DataConfig
from xvol_lab.data import shapes_seg as gen
from xvol_lab.data.canvas import SHAPES, shape_mask
from xvol_lab.errors import ConfigError
from xvol_lab.schema import from_dict


def small(root: Path, **changes) -> DataConfig:
    fields = {"name": "shapes-seg", "root": str(root), "num_train": 12, "num_val": 6, "num_classes": 5,
              "num_workers": 0} | changes
    return DataConfig(**fields)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(cfg: DataConfig) -> list[str]:
    return sorted(p.name for p in gen.dataset_dir(cfg).parent.iterdir() if ".tmp-" in p.name)


def test_same_seed_gives_byte_identical_files_in_the_masks_layout(tmp_path):
    a = tree(gen.generate(small(tmp_path / "a")))
    assert a == tree(gen.generate(small(tmp_path / "b")))
    expected = {f"{kind}/{split}/{i:05d}.png" for kind in ("images", "masks")
                for split, n in (("train", 12), ("val", 6)) for i in range(n)}
    assert set(a) == expected | {"classes.txt", "manifest.json"}
    assert a["classes.txt"].decode().splitlines() == ["background", "circle", "square", "triangle", "cross"]
    c = tree(gen.generate(small(tmp_path / "c", seed=1)))
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in pngs) == len(pngs)


def test_folder_name_and_manifest_carry_the_parameters(tmp_path):
    folder = gen.generate(small(tmp_path, image_size=24, seed=3))
    assert folder == tmp_path / "shapes-seg" / "c5-s24-n12-v6-seed3"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["params"] == {"num_classes": 5, "image_size": 24, "num_train": 12, "num_val": 6,
                                  "seed": 3}
    assert (manifest["generator"], manifest["counts"]) == ("shapes-seg", {"train": 12, "val": 6})
    pixels = np.stack([np.asarray(Image.open(p)) for p in (folder / "images" / "train").glob("*.png")])
    np.testing.assert_allclose(manifest["mean"], pixels.reshape(-1, 3).mean(0) / 255, atol=1e-5)
    np.testing.assert_allclose(manifest["std"], pixels.reshape(-1, 3).std(0) / 255, atol=1e-5)
    with Image.open(folder / "images" / "val" / "00000.png") as img, \
            Image.open(folder / "masks" / "val" / "00000.png") as mask:
        assert (img.size, img.mode, mask.size, mask.mode) == ((24, 24), "RGB", (24, 24), "L")


def test_masks_label_the_drawn_shapes(tmp_path):
    cfg = small(tmp_path, num_train=30)
    folder = gen.generate(cfg)
    for i in range(30):
        image, mask, placements = gen.draw(np.random.default_rng([cfg.seed, 0, i]), 5, 32)
        assert np.array_equal(np.asarray(Image.open(folder / "images" / "train" / f"{i:05d}.png")), image)
        assert np.array_equal(np.asarray(Image.open(folder / "masks" / "train" / f"{i:05d}.png")), mask)
        assert 1 <= len(placements) <= 3
        coverage = [shape_mask(p, 32) for p in placements]
        # nothing drawn -> background; labels are the kinds drawn (+1)
        assert (mask[np.max(coverage, axis=0) == 0] == 0).all()
        assert set(np.unique(mask)) <= {0} | {SHAPES.index(p.shape) + 1 for p in placements}
        # the top shape is never occluded: its inside carries its label and its colour
        top, inside = placements[-1], coverage[-1] > 0.999
        assert inside.sum() > 10 and (mask[inside] == SHAPES.index(top.shape) + 1).all()
        assert np.abs(image[inside].mean(0) / 255 - top.color).max() < 0.03


def test_kinds_beyond_ten_split_the_hue_circle():
    names = gen.class_names(12)
    assert names[0] == "background" and len(names) == 12
    assert names[10:] == ["hourglass-hue0", "circle-hue1"]


def test_bad_settings_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^image_size: got 8, expected an integer >= 16 for shapes-seg$"):
        from_dict(DataConfig, {"name": "shapes-seg", "image_size": 8})
    with pytest.raises(ConfigError, match=r"^num_classes: got 41, expected at most 40 for shapes-seg$"):
        from_dict(DataConfig, {"name": "shapes-seg", "num_classes": 41})
    assert not (tmp_path / "shapes-seg").exists()


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_generation_leaves_nothing_that_loads(tmp_path, monkeypatch, interrupt):
    cfg = small(tmp_path)
    real_draw, calls = gen.draw, []

    def failing_draw(*args):
        calls.append(1)
        if len(calls) == 9:
            raise interrupt
        return real_draw(*args)

    monkeypatch.setattr(gen, "draw", failing_draw)
    with pytest.raises(type(interrupt)):
        gen.generate(cfg)
    assert len(calls) == 9
    assert not gen.dataset_dir(cfg).exists() and leftovers(cfg) == []
    missing = r"^shapes-seg: no dataset at .*/c5-s32-n12-v6-seed0; run `python lab.py data make shapes-seg`"
    with pytest.raises(ConfigError, match=missing):
        gen.read_manifest(cfg)
    monkeypatch.setattr(gen, "draw", real_draw)
    assert tree(gen.generate(cfg)) == tree(gen.generate(small(tmp_path / "fresh")))


def test_existing_dataset_is_reused_and_a_foreign_one_refused(tmp_path, monkeypatch):
    cfg = small(tmp_path)
    folder = gen.generate(cfg)
    stamp = os.stat(folder / "manifest.json").st_mtime_ns
    monkeypatch.setattr(gen, "_write", lambda *a: pytest.fail("regenerated an existing dataset"))
    assert gen.generate(cfg) == folder
    assert os.stat(folder / "manifest.json").st_mtime_ns == stamp
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"version": 0}))
    with pytest.raises(ConfigError, match=r"manifest.json: made by .*'version': 0.*delete .* to regenerate$"):
        gen.generate(cfg)
    (folder / "manifest.json").unlink()
    with pytest.raises(ConfigError, match=r"c5-s32-n12-v6-seed0: exists but has no manifest.json"):
        gen.generate(cfg)


def test_concurrent_callers_generate_the_dataset_once(tmp_path, monkeypatch):
    cfg = small(tmp_path)
    assert writes_by_concurrent_callers(gen, gen.generate, cfg, tmp_path / "writes.log", monkeypatch) == 1
    assert leftovers(cfg) == []
    assert tree(gen.dataset_dir(cfg)) == tree(gen.generate(small(tmp_path / "single")))
