"""`cifar10` on a tiny fake folder in the python-pickle format of cifar-10-batches-py."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from xvol_lab.data import DataConfig, build_datamodule
from xvol_lab.errors import ConfigError

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"fake", b"labels": labels, b"data": data, b"filenames": []}, f)


def make_cifar(root: Path, per_batch: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(i * per_batch + j) % 10 for j in range(per_batch)]
        write_batch(folder / name, data, labels)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}, f)
    return batches


def module(root: Path, **changes):
    fields = {"name": "cifar10", "root": str(root), "batch_size": 4, "num_workers": 0} | changes
    return build_datamodule(DataConfig(**fields))


def test_reads_train_and_test_batches_pixel_exact(tmp_path):
    batches = make_cifar(tmp_path)
    dm = module(tmp_path)
    assert dm.num_classes == 10
    dm.setup("fit")
    assert dm.classes == NAMES
    assert (len(dm.train_set), len(dm.val_set)) == (15, 3)
    assert dm.train_set.targets == sum((batches[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    # row layout: 1024 red, then green, then blue values, each row-major over 32x32
    raw, labels = batches["test_batch"]
    x, y = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert x.shape == (3, 3, 32, 32) and y.tolist() == labels
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    pixels = x * std[:, None, None] + mean[:, None, None]
    expected = torch.from_numpy(raw.reshape(3, 3, 32, 32)).float() / 255
    assert torch.allclose(pixels, expected, atol=1e-5)


def test_train_batches_are_augmented_to_the_image_size(tmp_path):
    make_cifar(tmp_path)
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


def test_missing_corrupt_or_misshapen_batches_name_the_file(tmp_path):
    make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match=rf"^cifar10: missing file {folder / 'data_batch_3'}$"):
        module(tmp_path).setup("fit")
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match=rf"^cifar10: {folder / 'data_batch_3'}: not a CIFAR-10 python"):
        module(tmp_path).setup("fit")
    write_batch(folder / "data_batch_3", np.zeros((2, 100), np.uint8), [0, 1])
    with pytest.raises(ConfigError, match=r"data_batch_3: expected data of shape \(N, 3072\) and N labels, "
                                          r"got \(2, 100\) and 2$"):
        module(tmp_path).setup("fit")
    write_batch(folder / "data_batch_3", np.zeros((2, 3072), np.uint8), [0, 10])
    with pytest.raises(ConfigError, match=r"data_batch_3: labels outside 0..9$"):
        module(tmp_path).setup("fit")
