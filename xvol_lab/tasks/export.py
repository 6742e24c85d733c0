"""Deploy export: a trained checkpoint re-parameterized (one dynamic convolution per X-volution) and
saved with its spec, so `load_deploy` builds the deploy model directly, without the training form."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xvol_lab.atomic import atomic_path
from xvol_lab.errors import ConfigError
from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.ops import reparameterize
from xvol_lab.schema import from_dict, to_dict
from xvol_lab.tasks.classification import ClassificationTask

DEPLOY_KEYS = ("spec", "num_classes", "state_dict")


def export_deploy(checkpoint: str | Path, out_path: str | Path) -> Path:
    """Save the deploy form of the model in the Lightning `checkpoint` as
    ``{'spec': dict, 'num_classes': int, 'state_dict': deploy weights}`` at `out_path` (atomically)."""
    if not Path(checkpoint).is_file():
        raise ConfigError(f"{checkpoint}: no such checkpoint")
    task = ClassificationTask.load_from_checkpoint(checkpoint, map_location="cpu")
    deploy = reparameterize(task.model.eval())
    payload = {"spec": to_dict(task.spec), "num_classes": task.model.num_classes,
               "state_dict": deploy.state_dict()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    return out_path


def load_deploy(path: str | Path) -> nn.Module:
    """The deploy-form classifier saved by `export_deploy`, in eval mode."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such deploy file")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or set(payload) != set(DEPLOY_KEYS):
        raise ConfigError(f"{path}: not a deploy export; expected the keys {', '.join(DEPLOY_KEYS)}")
    model = build_classifier(from_dict(BackboneSpec, payload["spec"]), payload["num_classes"], deploy=True)
    model.load_state_dict(payload["state_dict"])
    return model.eval()
