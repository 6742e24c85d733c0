"""What every task's LightningModule shares: the optimiser and its per-step schedule, the training
losses (epoch means over all processes), the divergence check, and how the network executes
(channels-last memory format, `torch.compile`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from xvol_lab.tasks.config import OptimConfig
from xvol_lab.tasks.errors import NonFiniteLossError
from xvol_lab.tasks.metrics import TRAIN_LOSS
from xvol_lab.tasks.optim import build_optimizer, build_scheduler


def batch_mean() -> MeanMetric:
    """A mean without host synchronisation (no NaN check on the host: NaN propagates). Update it with
    a value repeated once per sample (`per_sample`) to weight batches by their size."""
    return MeanMetric(nan_strategy="disable")


def per_sample(value: Tensor, count: int) -> Tensor:
    """`value` repeated `count` times: a `batch_mean` update weighted by `count`."""
    return value.detach().expand(count)


class TaskModule(L.LightningModule):
    """Base of the tasks: subclasses set ``self.model`` (the network) and ``self.optim_config``.

    `loss_names` are the training losses the subclass logs (through `log_train_losses`), the
    first one the total watched for divergence. Per step each process logs its own values; the
    epoch means (``<name>_epoch`` and ``<name>``) are over all processes. A NaN or infinite total
    raises `NonFiniteLossError` on every process within ``trainer.log_every_n_steps`` steps of
    the step it happened at (and before any validation): the check reads one flag kept on the
    device, so the other steps never wait for the device.
    """

    model: nn.Module
    optim_config: OptimConfig

    def __init__(self, loss_names: Sequence[str] = (TRAIN_LOSS,)) -> None:
        super().__init__()
        self.loss_names = tuple(loss_names)
        self.train_losses = nn.ModuleDict({self._key(n): batch_mean() for n in self.loss_names})
        self.channels_last = False
        # (step, epoch, value) of the first non-finite total; step -1: none yet
        self._first_bad: Tensor | None = None
        self._unchecked = 0  # training steps since the last check

    @staticmethod
    def _key(name: str) -> str:
        return name.replace("/", "__")

    # -- how the network executes ------------------------------------------------------------
    def compile_target(self) -> nn.Module:
        """The part of the network `torch.compile` runs (the whole network; detection narrows it)."""
        return self.model

    def prepare_network(self, *, channels_last: bool = False, compile_backend: str | None = None) -> None:
        """Store the network (and, via `images_in`, its image batches) channels-last, and compile
        `compile_target()` in place with `compile_backend` (parameter names stay those of the eager
        network, so checkpoints do not change). Compilation happens at the first batch."""
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        if compile_backend is not None:
            self.compile_target().compile(backend=compile_backend)

    def images_in(self, images: Tensor) -> Tensor:
        """An image batch (B, C, H, W) in the network's memory format."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # -- training losses and the divergence check --------------------------------------------
    def log_train_losses(self, losses: Sequence[Tensor], batch_size: int) -> None:
        """Log `losses` (one scalar per `loss_names` entry) and watch the first for divergence."""
        for name, value in zip(self.loss_names, losses, strict=True):
            mean = self.train_losses[self._key(name)]
            mean(value.detach())  # equal-sized training batches: no weights needed
            self.log(name, mean, on_step=True, on_epoch=True, prog_bar=name == TRAIN_LOSS,
                     batch_size=batch_size)
        self._watch(losses[0].detach())

    def _watch(self, total: Tensor) -> None:
        total = total.float()
        if self._first_bad is None:
            self._first_bad = torch.stack([total.new_full((), -1.0), total.new_full((), -1.0),
                                           total.new_zeros(())])
        # filled on the device (no host-to-device copy, no wait)
        here = torch.stack([total.new_full((), float(self.global_step)),
                            total.new_full((), float(self.current_epoch)), total])
        first = ~torch.isfinite(total) & (self._first_bad[0] < 0)
        self._first_bad = torch.where(first, here, self._first_bad)

    def check_finite(self) -> None:
        """Raise `NonFiniteLossError` on every process if any process saw a non-finite total since
        the run started (one all-reduce and one host read)."""
        self._unchecked = 0
        if self._first_bad is None:
            return
        bad = (self._first_bad[0] >= 0).float()
        if self.trainer.strategy.reduce(bad, reduce_op="sum").item() == 0:
            return
        step, epoch, value = self._first_bad.tolist()
        where = (f"{TRAIN_LOSS} is {value} at epoch {int(epoch) + 1}, step {int(step)}" if step >= 0
                 else f"{TRAIN_LOSS} is not finite on another process")
        raise NonFiniteLossError(f"{where} (checked every {self.trainer.log_every_n_steps} steps, "
                                 f"found at step {self.global_step})")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._unchecked += 1
        if self._unchecked >= self.trainer.log_every_n_steps:
            self.check_finite()

    def on_validation_epoch_start(self) -> None:
        if self._unchecked:  # no validation (and no checkpoint) of a diverged network
            self.check_finite()

    def on_train_epoch_end(self) -> None:
        if self._unchecked:
            self.check_finite()

    # -- optimiser ---------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.optim_config)
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, self.optim_config, total_steps, self.trainer.max_epochs)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}
