"""`cifar10` on a tiny generated folder in the python-pickle format of cifar-10-batches-py.

The lab reads CIFAR-10 with torchvision's `CIFAR10`, which checks every file against the MD5 of the
official file. Those files cannot be generated, so the fixture points torchvision's table of
checksums at the generated files' MD5s (its public class attributes); the lab's code runs unchanged.
"""

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10

from xvol_lab.data import DataConfig, build_datamodule
from xvol_lab.errors import ConfigError

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN = [f"data_batch_{k}" for k in range(1, 6)]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar(tmp_path, monkeypatch) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Six batches of 3 random images and batches.meta, as the official python version lays them out."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate([*TRAIN, "test_batch"]):
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = [(i * 3 + j) % 10 for j in range(3)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": "fake", "labels": labels, "data": data, "filenames": []}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": NAMES, "num_vis": 3072}, f)
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(folder / n)] for n in TRAIN])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})
    return batches


def module(root: Path, **changes):
    fields = {"name": "cifar10", "root": str(root), "batch_size": 4, "num_workers": 0} | changes
    return build_datamodule(DataConfig(**fields))


def test_reads_train_and_test_batches_pixel_exact(tmp_path, cifar):
    dm = module(tmp_path)
    assert dm.num_classes == 10
    dm.setup("fit")
    assert dm.classes == NAMES
    assert (len(dm.train_set), len(dm.val_set)) == (15, 3)
    assert list(dm.train_set.targets) == sum((cifar[name][1] for name in TRAIN), [])
    # row layout: 1024 red, then green, then blue values, each row-major over 32x32
    raw, labels = cifar["test_batch"]
    x, y = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert x.shape == (3, 3, 32, 32) and y.tolist() == labels
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    pixels = x * std[:, None, None] + mean[:, None, None]
    expected = torch.from_numpy(raw.reshape(3, 3, 32, 32)).float() / 255
    torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=0)


def test_train_batches_are_augmented_to_the_image_size(tmp_path, cifar):
    dm = module(tmp_path, image_size=24)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 24, 24) and y.dtype == torch.int64
    assert next(iter(dm.val_dataloader()))[0].shape == (3, 3, 24, 24)


def test_missing_folder_says_where_to_put_the_data(tmp_path):
    with pytest.raises(ConfigError, match=rf"^cifar10: no CIFAR-10 data at {tmp_path}/cifar-10-batches-py; "
                                          rf"extract cifar-10-python.tar.gz .* into {tmp_path}/$"):
        module(tmp_path).setup("fit")
    with pytest.raises(ConfigError, match="no CIFAR-10 data"):
        _ = module(tmp_path).num_classes


def test_a_missing_or_altered_batch_is_named(tmp_path, cifar):
    folder = tmp_path / "cifar-10-batches-py"
    good = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match=rf"^cifar10: missing file {folder / 'data_batch_3'}$"):
        module(tmp_path).setup("fit")
    (folder / "data_batch_3").write_bytes(good[:-100])  # truncated
    with pytest.raises(ConfigError, match=rf"^cifar10: {folder / 'data_batch_3'}: not the official CIFAR-10 "
                                          r"file \(MD5 differs: truncated or altered\); extract .* again$"):
        module(tmp_path).setup("fit")
