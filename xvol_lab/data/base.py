"""`ImageDataModule`: the dataloader settings shared by every dataset, and the device-side finish.

Loader defaults are sized from the machine: `num_workers` from the CPUs this process may use
(``os.sched_getaffinity``) shared among the processes of the node (a task of a several-task srun step
has its own ``--cpus-per-task`` CPUs, not divided again), `pin_memory` when the trainer
runs on CUDA, `persistent_workers` whenever there are workers. Under multi-process training each
process validates a disjoint part of the validation set, every sample once
(`UnpaddedDistributedSampler`). Training batches come in an order drawn from the run's training-order
seed (`order_seed`; the run seed where unset) and the epoch, each process its share, and resume
mid-epoch (`xvol_lab.data.sampler`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from xvol_lab.data.config import DataConfig
from xvol_lab.data.device import DeviceNormalize
from xvol_lab.data.sampler import EpochSampler, ResumableLoader
from xvol_lab.errors import ConfigError
from xvol_lab.srun import srun_task_cpus

MAX_AUTO_WORKERS = 16


def auto_num_workers(processes_per_node: int, cpus: int | None = None) -> int:
    """Workers per process: the usable CPUs shared among the node's processes, one left for the
    training process itself; at least 1, at most `MAX_AUTO_WORKERS`."""
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, processes_per_node) - 1))


def _auto_workers(trainer: Trainer | None) -> int:
    """`auto_num_workers` for this process: srun's own CPUs for a task of a several-task step (srun
    started each process and bound its CPUs), else the usable CPUs shared by the trainer's processes."""
    task_cpus = srun_task_cpus()
    if task_cpus is not None:
        return auto_num_workers(1, min(task_cpus, len(os.sched_getaffinity(0))))
    return auto_num_workers(trainer.num_devices if trainer is not None else 1)


class UnpaddedDistributedSampler(DistributedSampler):
    """Process `rank` of `num_replicas` takes indices rank, rank + num_replicas, ...: every sample
    exactly once, none repeated (DistributedSampler pads to equal lengths with duplicates). Process
    batch counts differ by at most one, so metrics must sync sums, as torchmetrics do."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def loader_options(cfg: DataConfig, trainer: Trainer | None, dataset: Dataset, *,
                   train: bool) -> dict[str, Any]:
    """DataLoader keyword arguments for `dataset`: batching, workers, pinning and, for evaluation
    under several processes, the sampler (training samplers are `EpochSampler`s, see `_loader`)."""
    workers = _auto_workers(trainer) if cfg.num_workers is None else cfg.num_workers
    on_cuda = (isinstance(trainer.accelerator, CUDAAccelerator) if trainer is not None
               else torch.cuda.is_available())
    options: dict[str, Any] = {
        "batch_size": cfg.batch_size, "num_workers": workers,
        # A last batch of one sample breaks BatchNorm in training; keep at least one batch.
        "drop_last": train and len(dataset) >= cfg.batch_size,
        "pin_memory": on_cuda if cfg.pin_memory is None else cfg.pin_memory,
        "persistent_workers": workers > 0 and cfg.persistent_workers is not False,
    }
    if not train and trainer is not None and trainer.world_size > 1:
        if len(dataset) < trainer.world_size:
            raise ConfigError(f"data: the validation set has {len(dataset)} samples, fewer than the "
                              f"{trainer.world_size} processes; expected at least one per process")
        options["sampler"] = UnpaddedDistributedSampler(dataset, trainer.world_size, trainer.global_rank)
    return options


class ImageDataModule(LightningDataModule):
    """Base class: subclasses fill `train_set`, `val_set`, `classes` and `normalize` in `setup`.

    `num_classes` must be known before `setup` (the model is built first): subclasses count the
    classes (`count_classes`) from the config or from a cheap look at the files, and `setup` may
    store the count it reads (``self._num_classes``). Batches leave the loaders as
    uint8 images; `on_after_batch_transfer` normalises them on the device with `normalize`.
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.classes: list[str] = []
        self.normalize = DeviceNormalize()
        self.order_seed: int | None = None  # the training order's seed; None: torch.initial_seed()
        self._num_classes: int | None = None

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = self.count_classes()
        return self._num_classes

    def count_classes(self) -> int:
        """The number of classes, known before `setup`; asked once."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The batch as the model takes it: images normalised on the batch's device, in float32 or
        the trainer's input dtype (Lightning converts float inputs before the transfer, when they
        are still uint8 here)."""
        batch = self.normalize(batch)
        return batch if self.trainer is None else self.trainer.precision_plugin.convert_input(batch)

    def _loader(self, dataset: Dataset | None, *, train: bool, **extra: Any) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        options = {**loader_options(self.cfg, self.trainer, dataset, train=train), **extra}
        if not train:
            return DataLoader(dataset, **options)
        rank, world = (0, 1) if self.trainer is None else (self.trainer.global_rank, self.trainer.world_size)
        # `fit` sets order_seed (the run's training_order_seed); a loader built outside it takes
        # torch.initial_seed(). Either is the same on every process.
        seed = torch.initial_seed() if self.order_seed is None else self.order_seed
        return ResumableLoader(dataset, EpochSampler(len(dataset), seed, rank, world), **options)
