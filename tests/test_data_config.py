"""DataConfig validation, and a datamodule for every dataset name."""

import re

import pytest

from xvol_lab.data import DATASET_NAMES, SYNTHETIC_NAMES, DataConfig, ImageDataModule, build_datamodule
from xvol_lab.errors import ConfigError
from xvol_lab.schema import from_dict, to_dict, with_overrides


@pytest.mark.parametrize("cfg", [DataConfig(), DataConfig(name="coco", root="/data/coco", num_workers=2,
                                                              pin_memory=False, persistent_workers=True)])
def test_round_trips_through_plain_dicts(cfg):
    assert from_dict(DataConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("changes, message", [
    ({"name": "mnist"},
     "name: got 'mnist', expected one of 'shapes', 'shapes-context', 'shapes-side', "
     "'imagefolder', 'cifar10', 'shapes-seg', 'masks', 'shapes-coco', 'coco'"),
    ({"root": ""}, "root: got '', expected a folder path"),
    ({"image_size": 4}, "image_size: got 4, expected an integer >= 8"),
    ({"image_size": 12}, "image_size: got 12, expected an integer >= 16 for shapes"),
    ({"name": "shapes-context", "image_size": 24},
     "image_size: got 24, expected an integer >= 32 for shapes-context"),
    ({"batch_size": 0}, "batch_size: got 0, expected an integer >= 1"),
    ({"num_workers": -1}, "num_workers: got -1, expected an integer >= 0"),
    ({"num_classes": 1}, "num_classes: got 1, expected an integer >= 2"),
    ({"num_classes": 41}, "num_classes: got 41, expected at most 40 for shapes"),
    ({"num_train": 5}, "num_train: got 5, expected an integer >= 10 (num_classes) for shapes"),
    ({"num_val": 3, "num_classes": 4}, "num_val: got 3, expected an integer >= 4 (num_classes) for shapes"),
    ({"seed": -1}, "seed: got -1, expected an integer >= 0"),
])
def test_bad_values_name_the_field(changes, message):
    with pytest.raises(ValueError) as err:
        DataConfig(**changes)
    assert str(err.value) == message


def test_real_datasets_skip_synthetic_limits():
    cfg = DataConfig(name="imagefolder", image_size=8, num_classes=1000, num_train=1, num_val=1)
    assert cfg.num_classes == 1000


def test_from_dict_and_overrides_raise_config_error_with_path():
    with pytest.raises(ConfigError, match=r"^data\.image_size: got 4, expected an integer >= 8$"):
        from_dict(DataConfig, {"image_size": 4}, path="data")
    with pytest.raises(ConfigError, match=r"^batch_size: got 'x', expected an integer$"):
        with_overrides(DataConfig(), ["batch_size=x"])
    assert with_overrides(DataConfig(), ["num_train=100", "name=cifar10"]).num_train == 100


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_name_builds_a_datamodule_without_touching_the_disk(name, tmp_path):
    """Synthetic sets know their classes from the config before anything exists; the others read
    them from their files, and say which folder or file is missing."""
    cfg = DataConfig(name=name, root=str(tmp_path / "root"), image_size=48, num_classes=7)
    dm = build_datamodule(cfg)
    assert isinstance(dm, ImageDataModule) and dm.image_size == 48
    if name in SYNTHETIC_NAMES:
        assert dm.num_classes == 7
    else:
        with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "root"))):
            _ = dm.num_classes
    assert not (tmp_path / "root").exists()
