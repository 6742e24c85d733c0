"""The masks datamodule: image and mask stay aligned through every augmentation; bad files name themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from xvol_lab.data import DataConfig
from xvol_lab.data.segmentation import IGNORE_INDEX, MasksDataModule, ShapesSegDataModule
from xvol_lab.errors import ConfigError

W, H = 40, 32  # source images are wider than tall; the loaders return 32 x 32
BOX = (slice(6, 26), slice(4, 20))  # label 1 ('box', red), on the left
IGNORED = (slice(6, 14), slice(24, 36))  # label 255 (green)


def config(root: Path, **changes) -> DataConfig:
    fields = {"name": "masks", "root": str(root), "image_size": 32, "batch_size": 4,
              "num_workers": 0} | changes
    return DataConfig(**fields)


def source() -> tuple[np.ndarray, np.ndarray]:
    """An image whose colours tell its labels: red box = 1, green = ignore, else 0; blue rises to the
    right everywhere (so a horizontal flip is visible) and never reaches 0 (padding is all zero)."""
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 2] = np.round(255 * (0.2 + 0.6 * np.arange(W) / (W - 1)))
    mask = np.zeros((H, W), np.uint8)
    image[BOX + (0,)], mask[BOX] = 255, 1
    image[IGNORED + (1,)], mask[IGNORED] = 255, IGNORE_INDEX
    return image, mask


def write_dataset(root: Path, n: int = 2, *, palette_masks: bool = False) -> Path:
    image, mask = source()
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\nbox\n")
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(image).save(root / "images" / split / f"img{i}.png")
            m = Image.fromarray(mask, mode="L")
            if palette_masks:  # VOC's SegmentationClass PNGs: palette indices are the labels
                m = m.convert("P")
                m.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192])
            m.save(root / "masks" / split / f"img{i}.png")
    return root


def denormalize(image: torch.Tensor, dm: MasksDataModule) -> torch.Tensor:
    """A sample's uint8 image in [0, 1] (the datamodule normalises batches on the device)."""
    return image.float() / 255


def interior(mask: torch.Tensor, label: int) -> torch.Tensor:
    """Pixels of `label` whose 3x3 neighbourhood lies in the crop and is all `label` (away from edges,
    where bilinear image and nearest mask resampling may differ by half a pixel)."""
    inside = F.pad((mask == label).float()[None, None], (1, 1, 1, 1))
    return (-F.max_pool2d(-inside, 3, stride=1))[0, 0].bool()


def check_aligned(image: torch.Tensor, mask: torch.Tensor) -> None:
    red, green, blue = image
    box, background, ignored = interior(mask, 1), interior(mask, 0), interior(mask, IGNORE_INDEX)
    assert (red[box] > 0.5).all() and (green[box] < 0.5).all()
    assert (red[background] < 0.5).all() and (green[background] < 0.5).all()
    padding = image.abs().amax(0) < 0.02
    assert ((green[ignored] > 0.5) | padding[ignored]).all() and (red[ignored] < 0.5).all()


def test_augmented_samples_keep_image_and_mask_aligned_and_flip_together(tmp_path):
    dm = MasksDataModule(config(write_dataset(tmp_path)))
    dm.setup("fit")
    torch.manual_seed(0)
    flipped = []
    for _ in range(40):
        image, mask = dm.train_set[0]
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
        assert mask.shape == (32, 32) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= {0, 1, IGNORE_INDEX}  # nearest: no blended labels
        image = denormalize(image, dm)
        check_aligned(image, mask)
        # blue rises to the right in the source: falling means the sample was flipped
        real = image.abs().amax(0) >= 0.02
        pairs = real[:, 1:] & real[:, :-1]
        if pairs.sum() > 20:
            flipped.append(bool((image[2, :, 1:] - image[2, :, :-1])[pairs].mean() < 0))
        if (mask == 1).sum() > 20:  # the box (left in the source) is seen on either side
            columns = (mask == 1).nonzero()[:, 1].float()
            assert columns.min() >= 0 and columns.max() <= 31
    assert 8 <= sum(flipped) <= len(flipped) - 8  # both orientations occur, and checked aligned above


def test_eval_resizes_image_and_mask_to_image_size_with_nearest_labels(tmp_path):
    dm = MasksDataModule(config(write_dataset(tmp_path, palette_masks=True)))
    assert dm.num_classes == 2  # from classes.txt, before setup
    dm.setup("fit")
    assert dm.classes == ["background", "box"]
    image, mask = dm.val_set[1]
    assert image.shape == (3, 32, 32) and mask.dtype == torch.int64
    _, src = source()
    columns = np.floor(np.arange(32) * W / 32).astype(int)  # nearest-neighbour sampling of 40 -> 32
    assert np.array_equal(mask.numpy(), src[:, columns])
    check_aligned(denormalize(image, dm), mask)
    images, masks = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)


def test_shapes_seg_datamodule_reads_the_generated_folder(tmp_path):
    cfg = config(tmp_path, num_train=8, num_val=4, num_classes=3)
    dm = ShapesSegDataModule(cfg)
    assert dm.num_classes == 3
    missing = r"^shapes-seg: no dataset at .*/c3-s32-n8-v4-seed0; run `python lab.py data make shapes-seg`"
    with pytest.raises(ConfigError, match=missing):
        dm.setup("fit")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.root == tmp_path / "shapes-seg" / "c3-s32-n8-v4-seed0"
    assert dm.classes == ["background", "circle", "square"] and (len(dm.train_set), len(dm.val_set)) == (8, 4)
    images, masks = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    # normalised with the dataset's own train statistics, labels within the class list
    assert abs(float(images.mean())) < 0.5 and 0.5 < float(images.std()) < 1.5
    assert set(masks.unique().tolist()) <= {0, 1, 2}


def break_classes(root: Path) -> str:
    (root / "classes.txt").unlink()
    return str(root / "classes.txt")


def break_missing_mask(root: Path) -> str:
    (root / "masks" / "train" / "img1.png").unlink()
    return str(root / "images" / "train" / "img1.png") + r": no mask .*img1.png"


def break_missing_folder(root: Path) -> str:
    for p in (root / "masks" / "val").iterdir():
        p.unlink()
    (root / "masks" / "val").rmdir()
    return f"no folder {root / 'masks' / 'val'}"


@pytest.mark.parametrize("damage", [break_classes, break_missing_mask, break_missing_folder])
def test_missing_files_raise_at_setup_naming_the_path(tmp_path, damage):
    expected = damage(write_dataset(tmp_path))
    with pytest.raises(ConfigError, match=expected):
        MasksDataModule(config(tmp_path)).setup("fit")


def bad_labels(root: Path) -> str:
    mask = np.asarray(Image.open(root / "masks" / "train" / "img1.png")).copy()
    mask[0, 0], mask[1, 1] = 7, 2
    Image.fromarray(mask, mode="L").save(root / "masks" / "train" / "img1.png")
    return rf"img1.png: labels 2, 7 outside 0..1 \(2 classes in {root / 'classes.txt'}; 255 = ignore\)$"


def bad_size(root: Path) -> str:
    Image.fromarray(np.zeros((H, W - 1), np.uint8), mode="L").save(root / "masks" / "train" / "img1.png")
    return r"masks/train/img1.png: 39x32 pixels, but its image .*images/train/img1.png is 40x32$"


def bad_mode(root: Path) -> str:
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "masks" / "train" / "img1.png")
    return r"masks/train/img1.png: mode RGB, expected an 8-bit single-channel label PNG"


def bad_png(root: Path) -> str:
    (root / "masks" / "train" / "img1.png").write_bytes(b"\x89PNG not really")
    return r"masks/train/img1.png: cannot read mask"


@pytest.mark.parametrize("damage", [bad_labels, bad_size, bad_mode, bad_png])
def test_bad_masks_raise_when_loaded_naming_the_mask(tmp_path, damage):
    expected = damage(write_dataset(tmp_path))
    dm = MasksDataModule(config(tmp_path))
    dm.setup("fit")
    dm.train_set[0]  # the intact sample loads
    with pytest.raises(ConfigError, match=expected):
        dm.train_set[1]


def test_a_bad_mask_met_in_a_worker_is_still_one_line(tmp_path):
    bad_labels(write_dataset(tmp_path))
    dm = MasksDataModule(config(tmp_path, num_workers=1))
    dm.setup("fit")
    with pytest.raises(ConfigError) as info:
        list(dm.train_dataloader())
    assert "\n" not in str(info.value) and str(info.value).endswith("255 = ignore)")
    assert "masks/train/img1.png: labels 2, 7 outside 0..1" in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("background\n", r"classes.txt: got 1 classes, expected 2 to 255"),
    ("background\n\nbox\n", r"classes.txt: line 2 is empty; expected one class name per line"),
    ("a\nb\na\n", r"classes.txt: class names repeated: a; expected distinct names"),
])
def test_bad_class_lists_name_the_file(tmp_path, text, expected):
    write_dataset(tmp_path)
    (tmp_path / "classes.txt").write_text(text)
    dm = MasksDataModule(config(tmp_path))
    with pytest.raises(ConfigError, match=expected):
        assert dm.num_classes
