"""`EpochHistory`: the metrics of every validated epoch, kept in checkpoints, to report the best one;
`PreemptionCheckpoint`: last.ckpt written at once when SIGTERM stops training mid-epoch;
`ProgressBar`: Lightning's Rich progress bar without a wait for the device at every step."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torchmetrics import Metric

from xvol_lab.atomic import file_mode
from xvol_lab.data.sampler import ResumableLoader
from xvol_lab.tasks.metrics import RUN_METRICS

log = logging.getLogger(__name__)


class EpochHistory(Callback):
    """Records, for each epoch that ran validation, the ``val/*`` and ``train/*`` epoch metrics.

    Its state is saved in checkpoints, so a resumed run remembers the epochs before the resume.
    Values are the synchronised (all-process) ones that Lightning reports on every process.
    """

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor = monitor
        self.mode = mode
        self.history: list[dict[str, float]] = []

    def _metrics(self, trainer: L.Trainer, prefix: str) -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items()
                if k.startswith(prefix) and not k.endswith(("_step", "_epoch"))}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.history.append({"epoch": float(trainer.current_epoch), **self._metrics(trainer, "val/")})

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.history and self.history[-1]["epoch"] == trainer.current_epoch:
            self.history[-1].update(self._metrics(trainer, "train/"))

    def best(self) -> dict[str, float]:
        """The record of the best epoch by `monitor` (earliest on ties), with ``best_epoch`` counted
        from 1 (the number of epochs trained), and the metrics of the whole run (`RUN_METRICS`) of the
        last validated epoch; ``{}`` when no epoch was validated."""
        scored = [r for r in self.history if self.monitor in r]
        if not scored:
            return {}
        sign = 1.0 if self.mode == "max" else -1.0
        record = max(scored, key=lambda r: sign * r[self.monitor])
        best = {k: v for k, v in record.items() if k != "epoch"}
        best["best_epoch"] = record["epoch"] + 1.0
        best.update({k: v for k, v in self.history[-1].items() if k in RUN_METRICS})
        return best

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict["history"]]


def _mergeable_metrics(pl_module: L.LightningModule) -> dict[str, Metric]:
    """The module's torchmetrics whose accumulated state can be merged back (`Metric.merge_state`)."""
    return {name: m for name, m in pl_module.named_modules()
            if isinstance(m, Metric) and m.full_state_update is False and not m.dist_sync_on_step
            and all(isinstance(v, Tensor) for v in m.metric_state.values())}


def _per_process(trainer: L.Trainer, value: Tensor) -> Tensor:
    """`value` of every process, stacked on the CPU: (world_size, *value.shape)."""
    value = value.detach()
    return (value.unsqueeze(0) if trainer.world_size == 1 else trainer.strategy.all_gather(value)).cpu()


def _resumable_loaders(trainer: L.Trainer) -> list[ResumableLoader]:
    """The run's training loaders that can resume mid-epoch."""
    loaders = trainer.train_dataloader
    found = loaders.values() if isinstance(loaders, dict) else loaders if isinstance(loaders, list | tuple) \
        else [loaders]
    return [loader for loader in found if isinstance(loader, ResumableLoader)]


class PreemptionCheckpoint(Callback):
    """On SIGTERM (preemption, scancel) during training, save `path` (last.ckpt) at once.

    Lightning stops after the running batch; the checkpoint holds the loop's position in the epoch,
    the training loader's (`xvol_lab.data.sampler.ResumableLoader`) and the epoch's metric sums so
    far (``train/*`` means), so ``resume='last'`` continues with the batches not yet trained on
    and ends as if never stopped. A stop during validation keeps the epoch-end checkpoint (that
    epoch's validation runs again on resume).
    """

    STATE_KEY = "xvol_lab_epoch_metric_states"
    LOADER_KEY = "xvol_lab_train_loader_states"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.preempted = False
        self.loader_states: list[dict[str, int]] = []  # to load when the training loaders exist

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training or trainer.sanity_checking:
            return
        self.preempted = True
        tmp = self.path.with_name(f".{self.path.name}.preempted")
        trainer.save_checkpoint(tmp)  # every process takes part; global rank 0 writes
        if trainer.is_global_zero:
            os.chmod(tmp, file_mode())
            os.replace(tmp, self.path)
        # no process exits before the checkpoint is in place: srun (--kill-on-bad-exit) ends the step
        # when the first task exits with the stop's code, and rank 0 could be killed mid-write
        trainer.strategy.barrier("preemption-checkpoint")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[self.LOADER_KEY] = [loader.state_dict() for loader in _resumable_loaders(trainer)]
        if self.preempted:  # every process is here (the stop is broadcast): gather each one's sums
            checkpoint[self.STATE_KEY] = {name: {k: _per_process(trainer, v) for k, v in m.metric_state.items()}
                                          for name, m in _mergeable_metrics(pl_module).items()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(self.STATE_KEY, {})
        for name, metric in _mergeable_metrics(pl_module).items():
            states = saved.get(name, {})
            if states and all(len(v) == trainer.world_size for v in states.values()):
                metric.merge_state({k: v[trainer.global_rank].to(metric.device) for k, v in states.items()})
            elif states:
                log.warning("resumed on %d processes, stopped on another number: the interrupted epoch's "
                            "train/* means cover its batches after the resume only", trainer.world_size)
        self.loader_states = checkpoint.get(self.LOADER_KEY, [])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores loader states only when it builds the loaders after the restore; the
        # LR schedule's step count (`estimated_stepping_batches`) builds them before. The epoch's
        # iterator does not read its position before its first batch, so loading here is in time.
        for loader, state in zip(_resumable_loaders(trainer), self.loader_states, strict=False):
            loader.load_state_dict(state)
        self.loader_states = []


class ProgressBar(RichProgressBar):
    """The Rich progress bar, reading the logged metrics (which waits for the device) in training
    only every `every` optimiser steps, as the loggers do; the bar itself advances every batch. Its
    epochs are counted from 1 (``Epoch 1/5`` .. ``Epoch 5/5``), as the log lines and metrics.csv count them."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self._shown: dict[str, Any] | None = None

    def _label_epoch(self, trainer: L.Trainer) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            text = f"Epoch {trainer.current_epoch + 1}" + (f"/{trainer.max_epochs}" if trainer.max_epochs else "")
            self.progress.update(self.train_progress_bar_id, description=f"{text:{len(self.validation_description)}}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._label_epoch(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._label_epoch(trainer)  # Lightning re-creates the bar after validation, counted from 0

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if trainer.training and self._shown is not None and trainer.global_step % self.every:
            return self._shown
        self._shown = super().get_metrics(trainer, pl_module)
        return self._shown
