"""How a run executes on its hardware: the Trainer arguments that depend on the device and the
process count (determinism, SyncBatchNorm), the learning rate scaled to the global batch, and the
CPU threads it trains with."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Literal

import torch

from xvol_lab.errors import ConfigError
from xvol_lab.tasks.config import OptimConfig, RunConfig, TrainerConfig
from xvol_lab.tasks.registry import task_record

log = logging.getLogger(__name__)


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` intra-op CPU threads (`trainer.threads`), then restore the count
    it had; None leaves it as it is."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def uses_cuda(trainer: TrainerConfig) -> bool:
    """Whether the run's accelerator is CUDA ('auto' and 'gpu' are, when CUDA is available)."""
    return trainer.accelerator == "cuda" or (trainer.accelerator in ("auto", "gpu")
                                             and torch.cuda.is_available())


def deterministic_mode(trainer: TrainerConfig) -> bool | Literal["warn"]:
    """Lightning's `deterministic` argument: on CUDA, true becomes "warn", because the backward of
    bilinear upsampling, NLL loss and RoI Align has no deterministic CUDA kernel and would raise."""
    if trainer.deterministic and uses_cuda(trainer):
        log.info("trainer.deterministic: true on CUDA runs as 'warn': deterministic algorithms where "
                 "they exist, a warning for the kernels that have none (interpolate/NLL/RoI Align backward)")
        return "warn"
    return trainer.deterministic


def sync_batchnorm(config: RunConfig) -> bool:
    """`trainer.sync_batchnorm`, or by default: on for the dense tasks under multi-process CUDA
    training. SyncBatchNorm only runs on CUDA, so asking for it elsewhere is a config error."""
    t = config.trainer
    if t.sync_batchnorm is None:
        distributed = t.devices != 1 or t.num_nodes > 1
        return task_record(config.task).dense and distributed and uses_cuda(t)
    if t.sync_batchnorm and not uses_cuda(t):
        raise ConfigError(f"trainer.sync_batchnorm: got true with accelerator {t.accelerator!r} and no CUDA, "
                          "expected false or null (SyncBatchNorm runs on CUDA only)")
    return t.sync_batchnorm


def global_batch(config: RunConfig, world_size: int) -> int:
    """Images per optimiser step: data.batch_size x processes x trainer.accumulate_grad_batches."""
    return config.data.batch_size * world_size * config.trainer.accumulate_grad_batches


def effective_optim(config: RunConfig, world_size: int) -> OptimConfig:
    """`config.optim` with `lr` scaled to the global batch by `optim.lr_scaling` (then 'none')."""
    optim = config.optim
    if optim.lr_scaling == "none":
        return optim
    batch = global_batch(config, world_size)
    lr = optim.scaled_lr(batch)
    log.info("optim.lr_scaling=%s: global batch %d (%d x %d processes x %d accumulated) against "
             "reference_batch %d: lr %g -> %g", optim.lr_scaling, batch, config.data.batch_size, world_size,
             config.trainer.accumulate_grad_batches, optim.reference_batch, optim.lr, lr)
    return dataclasses.replace(optim, lr=lr, lr_scaling="none")


__all__ = ["deterministic_mode", "effective_optim", "global_batch", "sync_batchnorm",
           "uses_cuda"]
