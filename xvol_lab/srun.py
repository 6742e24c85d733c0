"""What a process sees of the ``srun`` step it runs in: its task count and its own CPUs.

An ``srun --ntasks=N --exact --cpus-per-task=C`` step starts every process itself and gives each task
its C CPUs: they are this process's share already, not the node's to be divided among N processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def srun_tasks(env: Mapping[str, str] | None = None) -> int:
    """How many tasks the srun step this process belongs to has (0 outside a step)."""
    env = os.environ if env is None else env
    if "SLURM_STEP_ID" not in env:
        return 0
    text = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))
    return int(text) if text.isdigit() else 1


def srun_task_cpus(env: Mapping[str, str] | None = None) -> int | None:
    """The CPUs srun gave this task (``SLURM_CPUS_PER_TASK``) when it is one task of a several-task step,
    else None (the CPUs are the node's or the step's, shared by the processes this one starts)."""
    env = os.environ if env is None else env
    text = env.get("SLURM_CPUS_PER_TASK", "")
    return int(text) if srun_tasks(env) >= 2 and text.isdigit() and int(text) > 0 else None
