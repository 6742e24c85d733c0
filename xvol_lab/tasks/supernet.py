"""Supernet training (single-path one-shot): any task's LightningModule trains a `Supernet` when
`SupernetTraining` is among its Trainer's callbacks.

At ``setup`` the callback turns the task's network (``pl_module.model``, built from the base spec)
into a supernet in place (`xvol_lab.models.supernet`), before the optimiser is made and before a
checkpoint is restored, so checkpoints hold every candidate's weights and `fit(..., resume='last')`
continues a supernet exactly as it continues a trial. Before every training step it sets the path
of index ``path_index(seed, global_step, count)``: uniform over the `count` paths, a function of the
seed and the step only, so every DDP process takes the same path in a step without communicating,
and a resumed run takes the paths the uninterrupted run would have. The paths are the given ones,
or with ``product=True`` every combination of the candidates their stages hold (`product_path`: the
index read as mixed-radix digits, one per stage, without listing the product), so that each
candidate of a stage is trained equally often. Validation runs ``paths[0]``.

`EpochSnapshots` keeps the supernet's weights at the end of every epoch (``<run>/checkpoints/snapshots/``),
so a path can be scored along the supernet's training, not only at its end (one_shot.score ``auc``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from xvol_lab.atomic import atomic_path
from xvol_lab.models import BackboneSpec
from xvol_lab.models.supernet import Supernet


def path_index(seed: int, step: int, count: int) -> int:
    """The path of optimiser step `step`: uniform in ``range(count)``, from (seed, step) alone."""
    return int(np.random.default_rng([seed, step]).integers(count))


SNAPSHOT_DIR = "snapshots"


class EpochSnapshots(Callback):
    """Saves the weights (no optimiser state) at the end of every training epoch as
    ``<checkpoint_dir>/snapshots/epoch<E>.ckpt`` (E: Lightning's epoch, from 0), from global rank 0,
    each written whole or not at all (`xvol_lab.atomic`); `snapshot_paths` lists them."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.folder = checkpoint_dir / SNAPSHOT_DIR

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / f"epoch{trainer.current_epoch}.ckpt") as tmp:
            torch.save({"epoch": trainer.current_epoch, "state_dict": pl_module.state_dict()}, tmp)


def snapshot_paths(checkpoint_dir: Path) -> list[Path]:
    """The snapshots `EpochSnapshots` wrote under `checkpoint_dir`, in epoch order."""
    return sorted((checkpoint_dir / SNAPSHOT_DIR).glob("epoch*.ckpt"), key=lambda p: int(p.stem[len("epoch"):]))


def stage_candidates(paths: Sequence[BackboneSpec]) -> list[list[Any]]:
    """Per stage, the distinct stage specs the paths use (the supernet's candidates)."""
    return [list(dict.fromkeys(p.stages[i] for p in paths)) for i in range(4)]


def path_count(paths: Sequence[BackboneSpec], product: bool) -> int:
    """How many paths a supernet over `paths` draws from: the paths, or (`product`) every
    combination of the candidates their stages hold."""
    return math.prod(len(c) for c in stage_candidates(paths)) if product else len(paths)


def product_path(base: BackboneSpec, candidates: Sequence[Sequence[Any]], index: int) -> BackboneSpec:
    """Path `index` of the product of the stages' `candidates`, in `itertools.product` order (the
    last stage varies fastest)."""
    stages = []
    for choices in reversed(candidates):
        index, digit = divmod(index, len(choices))
        stages.append(choices[digit])
    return dataclasses.replace(base, stages=tuple(reversed(stages)))


def build_supernet(network: Any, base: BackboneSpec, paths: Sequence[BackboneSpec]) -> Supernet:
    """`network` (built from `base`) turned into the supernet over `paths`, in place."""
    return Supernet(network, base, stage_candidates(paths))


class SupernetTraining(Callback):
    """Trains ``pl_module.model`` as the supernet over `paths` (module docstring)."""

    def __init__(self, base: BackboneSpec, paths: Sequence[BackboneSpec], seed: int, *, product: bool = False) -> None:
        if not paths:
            raise ValueError("paths: got none, expected at least one path")
        self.base, self.paths, self.seed = base, list(paths), seed
        self.candidates = stage_candidates(self.paths) if product else None
        self.count = path_count(self.paths, product)
        self.supernet: Supernet | None = None
        self.taken: list[tuple[int, int]] = []  # (global step, path index) of every training batch

    def path_at(self, step: int) -> BackboneSpec:
        """The path trained at optimiser step `step`."""
        index = path_index(self.seed, step, self.count)
        if self.candidates is None:
            return self.paths[index]
        return product_path(self.paths[0], self.candidates, index)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.supernet is None:
            self.supernet = build_supernet(pl_module.model, self.base, self.paths)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        assert self.supernet is not None
        step = trainer.global_step
        self.taken.append((step, path_index(self.seed, step, self.count)))
        self.supernet.set_path(self.path_at(step))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.supernet is not None
        self.supernet.set_path(self.paths[0])
