"""Deploy export: a trained checkpoint of any task re-parameterized (one dynamic convolution per
X-volution) and saved with everything needed to run it on new images.

A deploy file holds ``config`` (the `RunConfig` as a dict: task, spec, detector), ``num_classes``,
``state_dict`` (deploy-form weights), ``classes`` (class names, label order), ``category_ids``
(detectors: the dataset's category id of each label 1..K) and ``preprocess`` (`Preprocess` as a
dict: the validation pipeline's resizing and normalisation), so `load_deployed`
builds the deploy network directly, without the training form, and `Preprocess.transform` prepares
an image file exactly as validation did.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from xvol_lab.atomic import atomic_path
from xvol_lab.errors import ConfigError
from xvol_lab.ops import reparameterize
from xvol_lab.schema import from_dict, to_dict
from xvol_lab.tasks.config import RunConfig
from xvol_lab.tasks.registry import task_record

DEPLOY_KEYS = ("config", "num_classes", "state_dict", "classes", "category_ids", "preprocess")


@dataclass(frozen=True)
class Preprocess:
    """How validation prepared an image: `steps` (("resize", size) with an int for the short side or
    [h, w]; ("center_crop", size)) on the uint8 image, then a fixed `size` x `size` (detectors keep
    the aspect ratio instead), then ``x / 255`` normalised by `mean` and `std` (None: detectors
    normalise inside the network)."""

    size: int
    steps: tuple[tuple[str, Any], ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    fixed_size: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain types (the deploy file is read with ``weights_only=True``)."""
        return {"size": self.size, "steps": [[name, size] for name, size in self.steps],
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std), "fixed_size": self.fixed_size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        mean, std = data["mean"], data["std"]
        return cls(size=int(data["size"]), steps=tuple((str(n), s) for n, s in data["steps"]),
                   mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std),
                   fixed_size=bool(data["fixed_size"]))

    def transform(self) -> v2.Compose:
        """PIL image -> float32 tensor (3, H, W) as the network takes it."""
        ops: list[v2.Transform] = [v2.ToImage()]
        for name, size in self.steps:
            size = list(size) if isinstance(size, (list, tuple)) else size
            ops.append(v2.Resize(size, antialias=True) if name == "resize" else v2.CenterCrop(size))
        if self.fixed_size:
            ops.append(v2.Resize([self.size, self.size], antialias=True))  # a no-op when already that size
        ops.append(v2.ToDtype(torch.float32, scale=True))
        if self.mean is not None:
            ops.append(v2.Normalize(list(self.mean), list(self.std or ())))
        return v2.Compose(ops)


def _walk(transform: Any) -> Iterator[Any]:
    """The leaf transforms of `transform` (v2.Compose nested any depth), in order."""
    children = getattr(transform, "transforms", None)
    if isinstance(children, (list, tuple)):
        for child in children:
            yield from _walk(child)
    else:
        yield transform


@dataclass(frozen=True)
class DataInfo:
    """What a deploy file keeps of the data: preprocessing, class names, detectors' category ids."""

    preprocess: Preprocess
    classes: tuple[str, ...]
    category_ids: tuple[int, ...] = ()


def data_info(datamodule: L.LightningDataModule, task: str) -> DataInfo:
    """`DataInfo` of a set-up `datamodule` of `task`."""
    detects = task_record(task).output == "instances"
    category_ids = getattr(datamodule.val_set, "category_ids", ()) if detects else ()
    return DataInfo(preprocess_of(datamodule, task), tuple(datamodule.classes), tuple(map(int, category_ids)))


def preprocess_of(datamodule: L.LightningDataModule, task: str) -> Preprocess:
    """The validation preprocessing of a set-up `datamodule` (its val set's transform, and the
    normalisation it applies after the batch transfer, or inside the transform)."""
    val_set = datamodule.val_set
    transform = getattr(val_set, "transform", None) or getattr(val_set, "transforms", None)
    steps: list[tuple[str, Any]] = []
    mean = std = None
    for t in _walk(transform):
        if isinstance(t, v2.Resize):
            steps.append(("resize", t.size[0] if len(t.size) == 1 else list(t.size)))
        elif isinstance(t, v2.CenterCrop):
            steps.append(("center_crop", list(t.size)))
        elif isinstance(t, v2.Normalize):
            mean, std = tuple(t.mean), tuple(t.std)
    normalize = getattr(datamodule, "normalize", None)
    if getattr(normalize, "mean", None) is not None:
        mean, std = tuple(normalize.mean), tuple(normalize.std)
    return Preprocess(size=int(datamodule.image_size), steps=tuple(steps), mean=mean, std=std,
                      fixed_size=not task_record(task).takes_image_lists)


def load_trained(checkpoint: str | Path, task: str) -> L.LightningModule:
    """The LightningModule of `task` in the Lightning `checkpoint`, on the CPU, in eval mode."""
    if not Path(checkpoint).is_file():
        raise ConfigError(f"{checkpoint}: no such checkpoint")
    return task_record(task).lightning_module().load_from_checkpoint(checkpoint, map_location="cpu").eval()


def export_deploy(checkpoint: str | Path, out_path: str | Path, config: RunConfig | None = None,
                  info: DataInfo | None = None) -> Path:
    """Save the deploy form of the model in the Lightning `checkpoint` of `config.task` (default: the
    default `RunConfig`'s, a classifier) at `out_path`, atomically; see the module doc. The spec is the
    checkpoint's."""
    config = RunConfig() if config is None else config
    task = load_trained(checkpoint, config.task)
    config = dataclasses.replace(config, model=task.spec)
    deploy = reparameterize(task.model.eval())
    num_classes = int(task.hparams["num_classes"])
    payload = {"config": to_dict(config), "num_classes": num_classes, "state_dict": deploy.state_dict(),
               "classes": list(info.classes) if info else [],
               "category_ids": list(info.category_ids) if info else [],
               "preprocess": info.preprocess.to_dict() if info else None}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    return out_path


@dataclass(frozen=True)
class Deployed:
    """A deploy file loaded: the network (eval mode) and what it needs to run on images."""

    network: nn.Module
    config: RunConfig
    num_classes: int
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    preprocess: Preprocess | None


def _damage(path: Path) -> str | None:
    """What is wrong with a file torch cannot load, where the file itself tells: torch.save writes a
    zip archive."""
    if not zipfile.is_zipfile(path):
        return "not a file torch.save wrote (no zip archive: another kind of file, or cut short)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        return f"a damaged zip archive ({type(err).__name__}: {err})"
    return None if bad is None else f"a damaged zip archive (member {bad} fails its checksum)"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def load_deployed(path: str | Path) -> Deployed:
    """The deploy file `path` (`export_deploy`) with its network rebuilt in deploy form."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such deploy file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        why = _damage(path) or _first_line(err)
        raise ConfigError(f"{path}: cannot read the deploy file: {why}; expected a deploy.pt "
                          "written by `lab.py study export`") from None
    if not isinstance(payload, dict) or set(payload) != set(DEPLOY_KEYS):
        raise ConfigError(f"{path}: not a deploy export; expected the keys {', '.join(DEPLOY_KEYS)}")
    try:
        config = from_dict(RunConfig, payload["config"])
        network = task_record(config.task).build_network(config.model, payload["num_classes"],
                                                         config.detector, deploy=True)
    except (ConfigError, ValueError, TypeError, KeyError, IndexError) as err:
        raise ConfigError(f"{path}: its config and num_classes do not build a network ({_first_line(err)})") \
            from None
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError:
        raise ConfigError(f"{path}: the weights do not fit the network of its config "
                          f"({config.task}, {config.model.describe()})") from None
    preprocess = payload["preprocess"]
    return Deployed(network.eval(), config, payload["num_classes"], tuple(payload["classes"]),
                    tuple(payload["category_ids"]),
                    None if preprocess is None else Preprocess.from_dict(preprocess))


def load_deploy(path: str | Path) -> nn.Module:
    """The deploy-form network saved by `export_deploy`, in eval mode."""
    return load_deployed(path).network


def validation_batch(config: RunConfig, n: int) -> tuple[Tensor | list[Tensor], L.LightningDataModule]:
    """Up to `n` validation images of `config`'s data, as the network takes them (normalised after
    the transfer like training), and the set-up datamodule. Raises `ConfigError`/`OSError` when the
    data is not there (nothing is generated here)."""
    from xvol_lab.data import build_datamodule

    cfg = dataclasses.replace(config.data, num_workers=0, batch_size=n)
    datamodule = build_datamodule(cfg)
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    images = datamodule.on_after_batch_transfer(batch, 0)[0][:n]
    return images, datamodule


__all__ = ["DEPLOY_KEYS", "DataInfo", "Deployed", "Preprocess", "data_info", "export_deploy",
           "load_deploy", "load_deployed", "load_trained", "preprocess_of", "validation_batch"]
