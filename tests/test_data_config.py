"""DataConfig validation and the name -> datamodule registry."""

import pytest

from xvol_lab.data import DATAMODULES, DATASET_NAMES, DataConfig, build_datamodule
from xvol_lab.data.cifar import Cifar10DataModule
from xvol_lab.data.imagefolder import ImageFolderDataModule
from xvol_lab.data.synthetic import SyntheticDataModule
from xvol_lab.errors import ConfigError
from xvol_lab.schema import from_dict, to_dict, with_overrides


def test_defaults_match_the_shared_interface():
    cfg = DataConfig()
    assert to_dict(cfg) == {"name": "shapes", "root": "data", "image_size": 32, "batch_size": 64,
                            "num_workers": None, "num_train": 2000, "num_val": 500, "num_classes": 10,
                            "seed": 0, "pin_memory": None, "persistent_workers": None}
    assert from_dict(DataConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("changes, message", [
    ({"name": "mnist"},
     "name: got 'mnist', expected one of 'shapes', 'shapes-context', 'imagefolder', 'cifar10', "
     "'shapes-seg', 'masks', 'shapes-coco', 'coco'"),
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


def test_every_name_has_a_datamodule():
    assert set(DATAMODULES) == set(DATASET_NAMES)
    expected = {"shapes": SyntheticDataModule, "shapes-context": SyntheticDataModule,
                "imagefolder": ImageFolderDataModule, "cifar10": Cifar10DataModule}
    for name, cls in expected.items():
        dm = build_datamodule(DataConfig(name=name, image_size=48, num_classes=7))
        assert type(dm) is cls
        assert dm.image_size == 48
    assert build_datamodule(DataConfig(num_classes=7)).num_classes == 7
