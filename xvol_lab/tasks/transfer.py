"""Backbone transfer: start any task's backbone from trained weights (`RunConfig.init`).

The source may be a run folder (its ``checkpoints/best.ckpt``), an exported trial (its
``best.ckpt``; a study's export folder holding one trial stands for it), a Lightning checkpoint of
any task, or a torchvision-format state dict file
(``torchvision.models.resnet18().state_dict()`` saved with `torch.save`, or a torchvision
detector's). Only backbone tensors move: the stem and layer1..layer4, whatever network holds
them (a classifier's ``backbone``, a detector's ``backbone.body``). Heads stay as built.

Strict (the default): every backbone tensor of the target must come from the source with the
same shape, and the source must hold no other backbone tensor (another operator). Not strict:
each stage (stem, layer1..layer4) is loaded when its tensors all match, and left as initialised
otherwise. Either way the counts of matched, missing and unexpected tensors are logged.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from xvol_lab.errors import ConfigError
from xvol_lab.models.detection import from_torchvision_keys

log = logging.getLogger(__name__)

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
_TORCHVISION_STEM = "conv1.weight"


@dataclass(frozen=True)
class TransferReport:
    """What `init_backbone` loaded: tensor counts, and the stages loaded and skipped."""

    source: str
    matched: int
    missing: tuple[str, ...]  # target backbone tensors left as initialised
    unexpected: tuple[str, ...]  # source backbone tensors with no place in the target
    loaded_stages: tuple[str, ...]
    skipped_stages: tuple[str, ...]

    def describe(self) -> str:
        """One log line."""
        skipped = ", ".join(self.skipped_stages)
        skipped = f"; stages left as initialised: {skipped}" if skipped else ""
        return (f"init from {self.source}: {self.matched} tensors matched, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected; stages loaded: {', '.join(self.loaded_stages) or 'none'}"
                f"{skipped}")


def _checkpoint_of(path: Path) -> Path:
    """The checkpoint a folder stands for: a run's checkpoints/best.ckpt, an exported trial's
    best.ckpt, or that of the one trial of a study's export folder."""
    for candidate in (path / "checkpoints" / "best.ckpt", path / "best.ckpt"):
        if candidate.is_file():
            return candidate
    trials = sorted(path.glob("trial_*/best.ckpt"))
    if len(trials) == 1:
        return trials[0]
    if trials:
        raise ConfigError(f"{path}: a study export of {len(trials)} trials; expected one of its folders "
                          f"({', '.join(t.parent.name for t in trials)})")
    raise ConfigError(f"{path}: no checkpoint in this folder; expected a run folder (checkpoints/best.ckpt) "
                      "or an export folder (best.ckpt)")


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], Path]:
    """The tensors stored at `path` (see the module doc) and the file they came from."""
    path = Path(path)
    if path.is_dir():
        path = _checkpoint_of(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file or folder; expected a run folder, an export folder, a "
                          "checkpoint or a state dict file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: cannot read weights ({detail})") from None
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in payload.items()):
        raise ConfigError(f"{path}: not a checkpoint or state dict; expected a mapping of tensor names to "
                          "tensors")
    return dict(payload), path


def backbone_tensors(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """The backbone tensors of `state_dict`, keyed like `Backbone` (``stem.conv.weight``,
    ``layer1.0.op1.conv.weight``, ...), and the keys that are not backbone tensors.

    torchvision's ResNet keys (``conv1.weight``, ``layer1.0.conv1.weight``, optionally under a
    detector's ``backbone.body.``) are renamed with `from_torchvision_keys`."""
    keys = list(state_dict)
    torchvision_stem = [k for k in keys if re.fullmatch(r"(.*\.)?conv1\.weight", k)
                        and not re.search(r"layer\d\.\d+\.conv1\.weight$", k)]
    if torchvision_stem and not any(k.endswith("stem.conv.weight") for k in keys):
        prefix = torchvision_stem[0][: -len(_TORCHVISION_STEM)]
        renamed = from_torchvision_keys({"backbone.body." + k[len(prefix):]: v for k, v in state_dict.items()
                                         if k.startswith(prefix)})
        state_dict = {k[len("backbone.body."):]: v for k, v in renamed.items()}
        keys = list(state_dict)
    stem = next((k for k in keys if k.endswith("stem.conv.weight")), None)
    if stem is None:
        return {}, keys
    prefix = stem[: -len("stem.conv.weight")]
    out, other = {}, []
    for key, value in state_dict.items():
        rest = key[len(prefix):] if key.startswith(prefix) else None
        if rest is not None and rest.split(".", 1)[0] in STAGES:
            out[rest] = value
        else:
            other.append(key)
    return out, other


def backbone_of(network: nn.Module) -> nn.Module:
    """The module holding the stem and layer1..layer4 of a task's network."""
    for name in ("backbone.body", "backbone"):
        try:
            module = network.get_submodule(name)
        except AttributeError:
            continue
        if all(hasattr(module, stage) for stage in STAGES):
            return module
    raise TypeError(f"{type(network).__name__}: no backbone with {', '.join(STAGES)}")


def init_backbone(network: nn.Module, path: str | Path, *, strict: bool = True) -> TransferReport:
    """Load the backbone tensors at `path` into `network`'s backbone (see the module doc).

    Raises `ConfigError` naming the path and the first key that does not fit: in strict mode any
    missing, unexpected or reshaped tensor; otherwise when no stage at all matches."""
    state, file = read_state_dict(path)
    source, _ = backbone_tensors(state)
    if not source:
        raise ConfigError(f"{file}: no backbone tensors (stem, layer1..layer4 or torchvision's conv1, "
                          "layer1..layer4)")
    backbone = backbone_of(network)
    target = backbone.state_dict()
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target]
    reshaped = [k for k in target if k in source and source[k].shape != target[k].shape]
    if strict:
        if reshaped:
            k = reshaped[0]
            raise ConfigError(f"{file}: {k} has shape {tuple(source[k].shape)}, the network's "
                              f"{tuple(target[k].shape)}; expected the same architecture "
                              "(or init.strict=false to load only the stages that match)")
        if missing or unexpected:
            k, where = ((missing[0], "missing from the file") if missing
                        else (unexpected[0], "not in the network"))
            raise ConfigError(f"{file}: backbone tensor {k} is {where} ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected); expected the same operators "
                              "(or init.strict=false to load only the stages that match)")
        loaded = list(STAGES)
    else:
        bad = {k.split(".", 1)[0] for k in (*missing, *unexpected, *reshaped)}
        loaded = [s for s in STAGES if s not in bad]
        if not loaded:
            k = (reshaped or missing or unexpected)[0]
            raise ConfigError(f"{file}: no stage of the backbone matches (first mismatch: {k}); expected a "
                              "backbone with the same widths and at least one stage with the same operators")
    take = {k: v for k, v in source.items() if k in target and k.split(".", 1)[0] in loaded}
    with torch.no_grad():
        for key, value in take.items():
            target[key].copy_(value)
    report = TransferReport(source=str(file), matched=len(take),
                            missing=tuple(k for k in target if k not in take),
                            unexpected=tuple(k for k in source if k not in take),
                            loaded_stages=tuple(loaded),
                            skipped_stages=tuple(s for s in STAGES if s not in loaded))
    log.info("%s", report.describe())
    return report


__all__ = ["STAGES", "TransferReport", "backbone_of", "backbone_tensors", "init_backbone", "read_state_dict"]
