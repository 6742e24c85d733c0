"""Scoring supernet paths with inherited weights (SPOS search): `PathScorer`.

The trained supernet is rebuilt from its run's checkpoints. A path is scored by setting it,
recalibrating every BatchNorm on the first `bn_batches` training batches (`recalibrate_bn`: the
running statistics of a shared network are those of a mix of paths), and measuring on the first
`val_images` validation images, with the weights of the last checkpoint given:

- ``acc1``: top-1 accuracy;
- ``nll``: minus the mean cross-entropy (graded where the accuracy is at its ceiling);
- ``auc``: with the weights of *every* checkpoint given (the supernet's epoch snapshots), top-1
  accuracy rescaled from chance (0) to perfect (1), averaged: the area under the path's learning
  curve inside the supernet, the one-shot analogue of ``val/acc1_auc`` (how soon a path learns).

The batches and the checkpoints' weights are read once and kept in memory, so a score costs
`bn_batches` forward passes in training mode plus one pass over the validation images, per
checkpoint for ``auc``. Classification only: the scorer needs class logits.
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
    weights are in `checkpoints` (in training order; module docstring)."""

    def __init__(self, config: RunConfig, checkpoints: Sequence[Path], paths: Sequence[BackboneSpec], *,
                 bn_batches: int, val_images: int) -> None:
        if not checkpoints:
            raise ValueError("checkpoints: got none, expected at least one supernet checkpoint")
        torch.manual_seed(config.seed)  # the run's augmentation of the recalibration batches
        datamodule = build_datamodule(config.data)
        datamodule.order_seed = config.training_order_seed  # the run's training order: its recalibration batches
        datamodule.setup("fit")
        self.num_classes = datamodule.num_classes
        task = task_record(config.task).build_module(config.model, self.num_classes, to_dict(config.optim),
                                                     config.detector)
        self.supernet = build_supernet(task.model, config.model, paths)
        self.states = [torch.load(c, map_location="cpu", weights_only=False)["state_dict"] for c in checkpoints]
        self.task = task
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
    def _logits(self, path: BackboneSpec, state: dict[str, Tensor]) -> Tensor:
        """`path`'s logits on the scoring images with weights `state`, after BatchNorm recalibration."""
        self.task.load_state_dict(state)
        self.supernet.set_path(path)
        recalibrate_bn(self.network, self.bn_batches)
        return torch.cat([self.network(x) for x in self.val_images.split(256)])

    def _accuracy(self, logits: Tensor) -> float:
        return (logits.argmax(1) == self.val_labels).float().mean().item()

    def score(self, path: BackboneSpec, kind: str = "acc1") -> float:
        """`path`'s one-shot score of `kind` (``acc1``, ``nll`` or ``auc``: module docstring)."""
        if kind == "auc":
            chance = 1.0 / self.num_classes
            points = [(self._accuracy(self._logits(path, s)) - chance) / (1.0 - chance) for s in self.states]
            return sum(points) / len(points)
        logits = self._logits(path, self.states[-1])
        if kind == "nll":
            return -F.cross_entropy(logits.double(), self.val_labels).item()
        return self._accuracy(logits)

    def flops_g(self, path: BackboneSpec) -> float:
        """GFLOPs of one image through the stand-alone network of `path` (`count_flops`)."""
        net = build_classifier(path, self.num_classes).eval()
        return count_flops(net, torch.zeros(1, self.in_chans, self.image_size, self.image_size)) / 1e9
