"""Synthetic datamodules as a training loop sees them, transforms, and unreadable images."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from xvol_lab.data import DataConfig, build_datamodule, synthetic
from xvol_lab.data.base import UnpaddedDistributedSampler, auto_num_workers
from xvol_lab.data.device import DeviceNormalize
from xvol_lab.data.images import UnreadableImageError, load_rgb
from xvol_lab.data.transforms import imagenet_eval, imagenet_train, to_tensor
from xvol_lab.errors import ConfigError


def ready(root: Path, name: str = "shapes", **changes):
    fields = {"name": name, "root": str(root), "num_train": 40, "num_val": 20, "num_workers": 0,
              "batch_size": 16} | changes
    dm = build_datamodule(DataConfig(**fields))
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("name, size, classes", [("shapes", 16, 4), ("shapes-context", 32, 2)])
def test_batches_have_the_promised_shapes_and_labels(tmp_path, name, size, classes):
    dm = ready(tmp_path, name, image_size=size, num_classes=classes)
    assert (dm.num_classes, dm.image_size, len(dm.classes)) == (classes, size, classes)
    train = list(dm.train_dataloader())
    assert [len(y) for _, y in train] == [16, 16]  # 40 images: the last, partial batch is dropped
    val = list(dm.val_dataloader())
    assert [len(y) for _, y in val] == [16, 4]
    x, y = val[0]
    assert x.shape == (16, 3, size, size) and x.dtype == torch.uint8  # a quarter of float32's bytes
    assert y.dtype == torch.int64
    x, y = dm.on_after_batch_transfer(val[0], 0)  # on the device: float32, normalised
    assert x.shape == (16, 3, size, size) and x.dtype == torch.float32 and y.dtype == torch.int64
    labels = torch.cat([y for _, y in val])
    assert sorted(labels.tolist()) == sorted(i % classes for i in range(20))


def test_train_images_are_normalised_by_their_own_statistics(tmp_path):
    dm = ready(tmp_path)
    x = dm.normalize.images(torch.stack([img for img, _ in dm.train_set]))  # (40, 3, 32, 32)
    assert x.mean((0, 2, 3)).abs().max() < 1e-4
    assert (x.std((0, 2, 3)) - 1).abs().max() < 1e-3
    raw = np.asarray(Image.open(dm.train_set.samples[0][0]), dtype=np.float32) / 255
    assert not np.allclose(raw.mean(), 0, atol=0.1)  # i.e. the normalisation did something


def test_loader_settings(tmp_path, monkeypatch):
    dm = ready(tmp_path, num_workers=2, batch_size=64)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    assert not loader.drop_last  # 40 < 64: keep the one batch
    assert not loader.pin_memory  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dm.val_dataloader().pin_memory
    assert not ready(tmp_path).train_dataloader().persistent_workers
    explicit = ready(tmp_path, num_workers=2, pin_memory=False, persistent_workers=False).val_dataloader()
    assert not explicit.pin_memory and not explicit.persistent_workers


def test_loader_defaults_are_sized_from_the_machine(tmp_path, monkeypatch):
    assert [auto_num_workers(p, cpus=64) for p in (1, 8, 16, 64)] == [16, 7, 3, 1]
    assert auto_num_workers(1, cpus=2) == 1 and auto_num_workers(4, cpus=2) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(12)))
    dm = ready(tmp_path, num_workers=None)
    loader = dm.val_dataloader()
    assert loader.num_workers == 11 and loader.persistent_workers

    class FakeTrainer:  # what the loaders read of a 4-GPU trainer
        from lightning.pytorch.accelerators import CUDAAccelerator
        accelerator, num_devices, world_size, global_rank = CUDAAccelerator(), 4, 1, 0

    dm.trainer = FakeTrainer()
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.pin_memory  # 12 CPUs / 4 processes, minus the trainer's


def test_a_task_of_an_srun_step_sizes_its_workers_from_its_own_cpus(tmp_path, monkeypatch):
    """srun --ntasks=4 --exact --cpus-per-task=6 gives each process its 6 CPUs: 5 workers, not 6 / 4 - 1."""
    dm = ready(tmp_path, num_workers=None)

    class FakeTrainer:
        accelerator, num_devices, world_size, global_rank = None, 4, 4, 0

    dm.trainer = FakeTrainer()
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(6)))
    assert dm.train_dataloader().num_workers == 1  # the processes Lightning starts share the 6 CPUs
    for name, value in {"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4", "SLURM_CPUS_PER_TASK": "6"}.items():
        monkeypatch.setenv(name, value)
    assert dm.train_dataloader().num_workers == 5
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(24)))  # a step without CPU binding
    assert dm.train_dataloader().num_workers == 5
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: it starts the other processes itself
    assert dm.train_dataloader().num_workers == 5  # 24 CPUs / 4 processes - 1


@pytest.mark.parametrize("size, replicas", [(41, 2), (7, 3), (8, 4)])
def test_unpadded_sampler_visits_every_sample_once(size, replicas):
    parts = [list(UnpaddedDistributedSampler(range(size), replicas, rank)) for rank in range(replicas)]
    assert sorted(i for part in parts for i in part) == list(range(size))
    assert [len(UnpaddedDistributedSampler(range(size), replicas, r)) for r in range(replicas)] == \
        [len(p) for p in parts]
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_eval_loader_under_several_processes_has_no_duplicates(tmp_path):
    dm = ready(tmp_path, num_val=21, num_classes=3, batch_size=4)

    class Rank:
        accelerator, num_devices, world_size = None, 2, 2

        def __init__(self, rank):
            self.global_rank = rank

    seen = []
    for rank in (0, 1):
        dm.trainer = Rank(rank)
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler, UnpaddedDistributedSampler)  # Lightning keeps it
        seen += [int(y) for _, labels in loader for y in labels]
    assert len(seen) == 21 and sorted(seen) == sorted(dm.val_set.targets)
    dm.trainer = Rank(0)
    dm.trainer.world_size = 30
    with pytest.raises(ConfigError, match="the validation set has 21 samples, fewer than the 30 processes"):
        dm.val_dataloader()


def test_uint8_batches_normalised_on_the_device_equal_the_float_path(tmp_path):
    """The former worker-side path (ToDtype + Normalize per image) and the new one (uint8 batch, then
    DeviceNormalize on the batch) give the same tensors: the same kernels, so bit for bit on CPU."""
    dm = ready(tmp_path)
    images = [load_rgb(path) for path, _ in dm.val_set.samples[:6]]
    mean, std = dm.normalize.mean, dm.normalize.std  # the dataset's own statistics
    old = torch.stack([to_tensor(mean, std)(img) for img in images])
    x, _ = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    torch.testing.assert_close(x[:6], old, rtol=0, atol=0)
    # ImageNet eval: resize + centre crop, then the float path, as imagenet_eval used to end
    imagenet = DeviceNormalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    crop = v2.Compose([v2.Resize(18, antialias=True), v2.CenterCrop(16)])
    old = torch.stack([to_tensor(imagenet.mean, imagenet.std)(crop(img)) for img in images])
    new = imagenet.images(torch.stack([imagenet_eval(16)(img) for img in images]))
    torch.testing.assert_close(new, old, rtol=0, atol=0)


def test_setup_before_prepare_data_says_how_to_make_the_data(tmp_path):
    dm = build_datamodule(DataConfig(root=str(tmp_path), num_train=20, num_val=10))
    with pytest.raises(RuntimeError, match="call setup"):
        dm.train_dataloader()
    with pytest.raises(ConfigError, match=r"^shapes: no dataset at .*; run `python lab.py data make shapes`"):
        dm.setup("fit")


def damage_file(path: Path, damage: str) -> None:
    if damage == "garbage":
        path.write_bytes(b"this is not a png")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.unlink()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_unreadable_image_names_the_file(tmp_path, damage, monkeypatch):
    monkeypatch.setattr(synthetic, "IN_MEMORY_MIB", 0)  # decoded on access, as a large set is
    dm = ready(tmp_path)
    path = dm.val_set.samples[3][0]
    damage_file(path, damage)
    with pytest.raises(UnreadableImageError, match=rf"^{path}: cannot read image \(") as err:
        list(dm.val_dataloader())
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_an_unreadable_image_of_a_set_held_in_memory_is_named_when_the_run_starts(tmp_path, damage):
    path = ready(tmp_path).val_set.samples[3][0]  # a small set: decoded once, in setup
    damage_file(path, damage)
    dm = build_datamodule(DataConfig(name="shapes", root=str(tmp_path), num_train=40, num_val=20,
                                     num_workers=0, batch_size=16))
    with pytest.raises(UnreadableImageError, match=rf"^{path}: cannot read image \(") as err:
        dm.setup("fit")
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)


def test_unreadable_image_in_a_worker_is_still_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "IN_MEMORY_MIB", 0)
    dm = ready(tmp_path, num_workers=1)
    path = dm.val_set.samples[0][0]
    path.write_bytes(b"\x89PNG broken")
    with pytest.raises(UnreadableImageError) as err:
        list(dm.val_dataloader())
    assert str(err.value).startswith(f"{path}: cannot read image (")
    assert "\n" not in str(err.value)


def test_load_rgb_converts_to_rgb(tmp_path):
    Image.new("L", (5, 7), 200).save(tmp_path / "gray.png")
    img = load_rgb(tmp_path / "gray.png")
    assert img.mode == "RGB" and img.size == (5, 7) and img.getpixel((0, 0)) == (200, 200, 200)


def test_transform_sizes():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    for size in (16, 32):
        assert imagenet_train(size)(img).shape == (3, size, size)
        assert imagenet_eval(size)(img).shape == (3, size, size)
    assert imagenet_eval(224).transforms[0].size == [256]
    assert imagenet_eval(32).transforms[0].size == [36]
    # eval = centre crop of the resized image: a 70x50 image of two halves keeps the middle
    two = np.zeros((50, 70, 3), np.uint8)
    two[:, 35:] = 255
    out = imagenet_eval(16)(Image.fromarray(two))
    assert out.dtype == torch.uint8 and out[:, :, :7].max() < 13 and out[:, :, 9:].min() > 242


def test_to_tensor_normalises():
    img = Image.new("RGB", (4, 4), (255, 0, 51))
    x = to_tensor((0.5, 0.5, 0.5), (0.5, 0.25, 0.1))(img)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -2.0, -3.0]))


def test_lightning_prepares_sets_up_and_feeds_the_model(tmp_path):
    from lightning.pytorch import LightningModule, Trainer

    class Probe(LightningModule):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)
            self.seen = []

        def training_step(self, batch, _):
            x, y = batch
            self.seen.append((tuple(x.shape), int(y.min()), int(y.max())))
            return torch.nn.functional.cross_entropy(self.fc(x.mean((2, 3))), y)

        def validation_step(self, batch, _):
            self.seen.append(("val", tuple(batch[0].shape)))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = build_datamodule(DataConfig(root=str(tmp_path), image_size=16, num_classes=4, num_train=24,
                                     num_val=8, batch_size=8, num_workers=0))
    probe = Probe()
    Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(probe, dm)
    assert (tmp_path / "shapes" / "c4-s16-n24-v8-seed0" / "manifest.json").is_file()
    train = [s for s in probe.seen if s[0] != "val"]
    assert len(train) == 3 and all(s[0] == (8, 3, 16, 16) and 0 <= s[1] <= s[2] < 4 for s in train)
    assert [s for s in probe.seen if s[0] == "val"] == [("val", (8, 3, 16, 16))]
