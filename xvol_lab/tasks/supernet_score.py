"""Scoring supernet paths with inherited weights (SPOS search): `PathScorer`.

The trained supernet is rebuilt from its run's last checkpoint. A path is scored by setting it,
recalibrating every BatchNorm on the first `bn_batches` training batches (`recalibrate_bn`: the
running statistics of a shared network are those of a mix of paths), and measuring top-1 accuracy
(or minus the cross-entropy) on the first `val_images` validation images. The batches are read
once and kept in memory, so a score costs `bn_batches` forward passes in training mode plus one
pass over the validation images.
Classification only: the scorer needs class logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from xvol_lab.data import build_datamodule
from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.models.cost import count_flops
from xvol_lab.models.supernet import recalibrate_bn
from xvol_lab.schema import to_dict
from xvol_lab.tasks.config import RunConfig
from xvol_lab.tasks.registry import task_record
from xvol_lab.tasks.supernet import build_supernet


class PathScorer:
    """Scores paths of the supernet trained under `config` (base network) over `paths`, whose
    weights are in `checkpoint` (module docstring)."""

    def __init__(self, config: RunConfig, checkpoint: Path, paths: Sequence[BackboneSpec], *,
                 bn_batches: int, val_images: int) -> None:
        torch.manual_seed(config.seed)  # the training order (and so the recalibration batches) of the run seed
        datamodule = build_datamodule(config.data)
        datamodule.setup("fit")
        self.num_classes = datamodule.num_classes
        task = task_record(config.task).build_module(config.model, self.num_classes, to_dict(config.optim),
                                                     config.detector)
        self.supernet = build_supernet(task.model, config.model, paths)
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        task.load_state_dict(state)
        self.network = task.model.eval()
        self.bn_batches: list[Tensor] = [
            datamodule.on_after_batch_transfer(b, 0)[0]
            for b in itertools.islice(datamodule.train_dataloader(), bn_batches)]
        images, labels = [], []
        for batch in datamodule.val_dataloader():
            x, y = datamodule.on_after_batch_transfer(batch, 0)
            images.append(x)
            labels.append(y)
            if sum(len(t) for t in labels) >= val_images:
                break
        self.val_images = torch.cat(images)[:val_images]
        self.val_labels = torch.cat(labels)[:val_images]
        self.image_size = datamodule.image_size
        self.in_chans = config.model.in_chans

    @torch.no_grad()
    def score(self, path: BackboneSpec, kind: str = "acc1") -> float:
        """`path` on the scoring images after BatchNorm recalibration: top-1 accuracy (``acc1``) or
        minus the mean cross-entropy (``nll``: graded where the accuracy is at its ceiling)."""
        self.supernet.set_path(path)
        recalibrate_bn(self.network, self.bn_batches)
        logits = torch.cat([self.network(x) for x in self.val_images.split(256)])
        if kind == "nll":
            return -F.cross_entropy(logits.double(), self.val_labels).item()
        return (logits.argmax(1) == self.val_labels).float().mean().item()

    def flops_g(self, path: BackboneSpec) -> float:
        """GFLOPs of one image through the stand-alone network of `path` (`count_flops`)."""
        net = build_classifier(path, self.num_classes).eval()
        return count_flops(net, torch.zeros(1, self.in_chans, self.image_size, self.image_size)) / 1e9
