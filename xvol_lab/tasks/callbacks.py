"""`EpochHistory`: the metrics of every validated epoch, kept in checkpoints, to report the best one;
`ProgressBar`: Lightning's Rich progress bar without a wait for the device at every step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, RichProgressBar


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
        from 1 (the number of epochs trained); ``{}`` when no epoch was validated."""
        scored = [r for r in self.history if self.monitor in r]
        if not scored:
            return {}
        sign = 1.0 if self.mode == "max" else -1.0
        record = max(scored, key=lambda r: sign * r[self.monitor])
        best = {k: v for k, v in record.items() if k != "epoch"}
        best["best_epoch"] = record["epoch"] + 1.0
        return best

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict["history"]]


class ProgressBar(RichProgressBar):
    """The Rich progress bar, reading the logged metrics (which waits for the device) in training
    only every `every` optimiser steps, as the loggers do; the bar itself advances every batch."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self._shown: dict[str, Any] | None = None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if trainer.training and self._shown is not None and trainer.global_step % self.every:
            return self._shown
        self._shown = super().get_metrics(trainer, pl_module)
        return self._shown
