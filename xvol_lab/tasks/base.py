"""What every task's LightningModule shares: the optimiser and its per-step schedule, and the
divergence check on the training loss."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn

from xvol_lab.config import OptimConfig
from xvol_lab.tasks.errors import NonFiniteLossError
from xvol_lab.tasks.metrics import TRAIN_LOSS
from xvol_lab.tasks.optim import build_optimizer, build_scheduler


class TaskModule(L.LightningModule):
    """Base of the tasks: subclasses set ``self.model`` (the network) and ``self.optim_config``."""

    model: nn.Module
    optim_config: OptimConfig

    def mean_losses(self, losses: Tensor) -> Tensor:
        """`losses` (a scalar, or a vector whose first entry is the total) averaged over processes.

        Raises `NonFiniteLossError` on every process at the same step when the total is NaN or inf.
        """
        means = self.trainer.strategy.reduce(losses.detach(), reduce_op="mean")
        total = means if means.dim() == 0 else means[0]
        if not torch.isfinite(total):
            raise NonFiniteLossError(f"{TRAIN_LOSS} is {total.item()} at epoch {self.current_epoch}, "
                                     f"step {self.global_step}")
        return means

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.optim_config)
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, self.optim_config, total_steps, self.trainer.max_epochs)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}
