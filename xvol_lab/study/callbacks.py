"""Lightning callbacks of a trial process: the progress file and per-epoch reports for pruning.

Only global rank 0 writes files or talks to the storage; the pruning decision is broadcast from
rank 0 so that every process of a DDP trial stops at the same epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import lightning.pytorch as L
import optuna
from lightning.pytorch.callbacks import Callback

from xvol_lab.study.faults import batch_pause
from xvol_lab.study.files import write_json


def _val_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


class ProgressFile(Callback):
    """Writes ``{epoch, epochs, batch, batches, metrics, time}`` to `path` (at most every `every` s)."""

    def __init__(self, path: Path, every: float = 1.0) -> None:
        self.path = path
        self.every = every
        self._last = 0.0
        self.metrics: dict[str, float] = {}
        self.num_classes: int | None = None
        self.device: str = "cpu"

    def _write(self, trainer: L.Trainer, batch: int, force: bool = False) -> None:
        now = time.time()
        if not trainer.is_global_zero or (not force and now - self._last < self.every):
            return
        self._last = now
        batches = trainer.num_training_batches
        write_json(self.path, {
            "epoch": trainer.current_epoch + 1, "epochs": trainer.max_epochs, "batch": batch,
            "batches": batches if isinstance(batches, int) else None, "metrics": self.metrics, "time": now})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.num_classes = getattr(getattr(pl_module, "model", None), "num_classes", None)
        self.device = str(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, 0, force=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._write(trainer, batch_idx + 1)
        batch_pause()  # tests only (xvol_lab.study.faults)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.metrics = _val_metrics(trainer)
            self._write(trainer, trainer.num_training_batches if isinstance(trainer.num_training_batches, int)
                        else 0, force=True)


class TrialReports(Protocol):
    """What the reporter needs of the study's trial (`xvol_lab.study.trial.StudyTrial`)."""

    pruner: optuna.pruners.BasePruner

    def report(self, value: float, step: int) -> None: ...
    def should_prune(self) -> bool: ...


class PruningReporter(Callback):
    """Reports `metric` after each validation (step = `offset` + epoch, epochs from 1; the offset
    places a configuration's later seeds after its earlier ones) and stops the run when the
    study's pruner says so. `connect` opens the Optuna trial (called on global rank 0 only)."""

    def __init__(self, connect: Callable[[], TrialReports], metric: str, offset: int = 0) -> None:
        self.connect = connect
        self.metric = metric
        self.offset = offset
        self.trial: TrialReports | None = None
        self.pruned: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and self.trial is None:
            self.trial = self.connect()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        reason = None
        if self.trial is not None:
            value = _val_metrics(trainer).get(self.metric, math.nan)
            if math.isfinite(value):
                self.trial.report(value, self.offset + epoch)
                if self.trial.should_prune():
                    pruner = type(self.trial.pruner).__name__
                    reason = f"{self.metric}={value:.4f} at epoch {epoch}: {pruner}"
        if trainer.world_size > 1:
            reason = trainer.strategy.broadcast(reason, src=0)
        if reason is not None:
            self.pruned = reason
            trainer.should_stop = True

