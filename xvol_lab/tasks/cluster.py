"""The cluster environment of a run started as a task of an ``srun`` step.

Lightning guesses SLURM from the environment but ignores jobs named ``bash`` or ``interactive``
(an ``salloc``/``srun --pty bash`` session): every task would then start devices - 1 children of its
own, devices² processes writing one run folder. A process that srun started as one task of
several therefore gets `SLURMEnvironment` explicitly; ranks, world size and ``MASTER_PORT`` come
from the step. Lightning's own requeue on SIGUSR1 stays off: the study process decides what
happens to a preempted trial.
"""

from __future__ import annotations

import os

import torch
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

from xvol_lab.errors import ConfigError
from xvol_lab.srun import srun_tasks


def cluster_plugins(accelerator: str, devices: int) -> list[ClusterEnvironment]:
    """``[SLURMEnvironment]`` for a task of a several-task srun step, else ``[]`` (Lightning's choice).

    A step that binds GPUs to tasks (``--gpus-per-task``) shows each task one GPU, and Lightning
    would look for ``cuda:<local rank>``: refused with the flags that work.
    """
    if srun_tasks() < 2:
        return []
    visible = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
    if 0 < visible < devices:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        raise ConfigError(f"trainer.devices={devices}: this srun task sees {visible} GPU(s) "
                          f"(CUDA_VISIBLE_DEVICES={shown}); the step binds GPUs to tasks (--gpus-per-task): "
                          "start it with --gpus-per-node and --gpu-bind=none instead")
    return [SLURMEnvironment(auto_requeue=False)]
