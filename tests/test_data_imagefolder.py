"""`imagefolder` on a tiny ImageNet-layout fixture."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from xvol_lab.data import DataConfig, build_datamodule
from xvol_lab.data.images import UnreadableImageError
from xvol_lab.errors import ConfigError

COLORS = {"blue": (0, 0, 255), "red": (255, 0, 0)}  # sorted by name: blue = 0, red = 1


def make_folder(root: Path, per_class: dict[str, int]) -> Path:
    for split, count in per_class.items():
        for name, color in COLORS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (30 + 7 * i, 24), color).save(root / split / name / f"{i}.png")
    return root


def module(root: Path, **changes):
    fields = {"name": "imagefolder", "root": str(root), "image_size": 16, "batch_size": 4,
              "num_workers": 0} | changes
    return build_datamodule(DataConfig(**fields))


def test_loads_both_splits_with_labels_from_folders(tmp_path):
    dm = module(make_folder(tmp_path, {"train": 5, "val": 3}))
    assert dm.num_classes == 2  # known before setup, for building the model
    dm.setup("fit")
    assert dm.classes == ["blue", "red"]
    assert (len(dm.train_set), len(dm.val_set)) == (10, 6)
    assert [len(y) for _, y in dm.train_dataloader()] == [4, 4]
    xs, ys = zip(*(dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    # un-normalise: label 0 images are blue, label 1 images red
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    rgb = (x * std[:, None, None] + mean[:, None, None]).mean((2, 3))
    assert torch.allclose(rgb, torch.tensor([COLORS[dm.classes[i]] for i in y]) / 255.0, atol=1e-3)


def test_class_lists_must_agree(tmp_path):
    root = make_folder(tmp_path, {"train": 1, "val": 1})
    (root / "val" / "green").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "green" / "0.png")
    with pytest.raises(ConfigError, match=r"^imagefolder: class folders of .*train and .*val differ: "
                                          r"only in val: green$"):
        module(root).setup("fit")


@pytest.mark.parametrize("missing", ["", "train", "val"])
def test_missing_folder_names_the_path_and_the_layout(tmp_path, missing):
    root = tmp_path / "imagenet"
    if missing:
        make_folder(root, {"train": 1, "val": 1})
        for p in sorted((root / missing).rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (root / missing).rmdir()
    want = root / (missing or "train")
    with pytest.raises(ConfigError, match=rf"^imagefolder: no folder {want}; expected <root>/train/<class>/"):
        module(root).setup("fit")


def test_class_folder_without_images(tmp_path):
    root = make_folder(tmp_path, {"train": 1, "val": 1})
    (root / "train" / "red" / "0.png").unlink()
    with pytest.raises(ConfigError, match=rf"^imagefolder: {root / 'train'}: .*red"):
        module(root).setup("fit")


def test_corrupt_image_names_the_file(tmp_path):
    root = make_folder(tmp_path, {"train": 2, "val": 2})
    bad = root / "val" / "red" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    dm = module(root)
    dm.setup("fit")
    with pytest.raises(UnreadableImageError, match=rf"^{bad}: cannot read image"):
        list(dm.val_dataloader())
