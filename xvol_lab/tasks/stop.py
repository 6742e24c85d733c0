"""`SynchronizedStop`: under DDP, a stop signal to any process stops every process after the same batch.

Lightning's SIGTERM handler broadcasts from inside the handler and each process checks its own flag
at the end of its batch: processes signalled a moment apart (srun forwarding SIGUSR1, the scheduler
sending SIGTERM to every task) stopped at different batches or crossed collectives, and a rank
crashed ("Connection reset by peer") instead of writing the stop checkpoint. While training on
several processes this callback takes SIGTERM and SIGUSR1 itself and only records them; at the end
of every batch the processes agree (a max-reduce) whether any was signalled, and if so each one
calls Lightning's own SIGTERM handler at that same point, so that Lightning stops all of them after
this batch and `xvol_lab.tasks.callbacks.PreemptionCheckpoint` writes the stop checkpoint.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class SynchronizedStop(Callback):
    """See the module docstring; does nothing on one process (Lightning's handler stops it directly)."""

    def __init__(self) -> None:
        self.requested = False
        self._lightning: Callable[[int, FrameType | None], Any] | None = None
        self._usr1: Any = None

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if trainer.world_size < 2 or not callable(handler):
            return
        self._lightning, self._usr1 = handler, signal.getsignal(signal.SIGUSR1)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._request)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._lightning is None or trainer.received_sigterm:
            return
        flag = torch.tensor([1.0 if self.requested else 0.0], device=pl_module.device)
        if trainer.strategy.reduce(flag, reduce_op="max").item() > 0:
            self._lightning(signal.SIGTERM, None)  # every process, at this same batch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._lightning is not None:
            signal.signal(signal.SIGTERM, self._lightning)
            signal.signal(signal.SIGUSR1, self._usr1 if self._usr1 is not None else signal.SIG_DFL)
            self._lightning = None
