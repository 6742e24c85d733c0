"""Trials inside a SLURM allocation: the ``srun`` step of a multi-process trial, and what a trial
process sees of SLURM.

The study process runs once per job, directly in the batch script (`xvol_lab.study.sbatch` writes
one); each multi-process trial is one job step::

    srun --nodes=M --ntasks=M*N --ntasks-per-node=N --exact --cpus-per-task=C
         [--gpus-per-node=N --gpu-bind=none] --kill-on-bad-exit=1 --immediate=300
         [--overlap [--nodelist=THIS_NODE]] --export=ALL,MASTER_PORT=P[,MASTER_ADDR=127.0.0.1]
         python -m xvol_lab.study.trial DIR

- ``--gpus-per-node`` with ``--gpu-bind=none``: every task sees the node's N GPUs and Lightning
  picks ``cuda:<local rank>`` (with ``--gpus-per-task`` each task would see one GPU and
  ``devices=N`` would fail); the job's own ``--gpus-per-task`` is not passed on to the step.
- ``MASTER_PORT``: a port free on this node when the trial starts, different for every trial of
  this process (Lightning would derive the same port from the job id for every trial). A trial on
  one node rendezvouses on 127.0.0.1 (it may run on another node than the job's first, which
  Lightning would pick from the node list); a multi-node trial on the first node of its step.
- ``--overlap``: a worker that itself runs in a step (``SLURM_STEP_ID`` set, e.g. started with
  ``srun`` or from ``srun --pty bash``) holds the resources its trial needs; without it the trial's
  step would wait for them forever. Overlapping steps may be given the same GPUs, so a worker of a
  ``--workers K`` pool started inside a step (`xvol_lab.study.pool`) carries its own GPUs by UUID
  (``TRIAL_GPUS_ENV``): its trial's step asks for all of the node's GPUs and the trial process keeps
  only those (`apply_trial_gpus`), so that the pool's trials never share a GPU. ``--immediate``
  bounds every wait for a step's resources.
  Several workers in one step (one per node) each keep their trials on their own node; their
  trials cannot span nodes (refused).

A trial not started by srun (one process, or torch.distributed.run on this machine) sees no
``SLURM_*`` variables: a worker started by srun would otherwise pass on its own rank
(``SLURM_PROCID``) and task counts, and the trial would believe it is one rank of many.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, MutableMapping

from xvol_lab.errors import ConfigError

TRIAL_GPUS_ENV = "XVOL_TRIAL_GPUS"  # the GPUs (UUIDs) a pool worker's trials run on, inside a step
STEP_WAIT_S = 300  # how long a trial's srun waits for its resources before failing (--immediate)
# srun reads these as options; the step's own flags replace them, so they are not passed on
STEP_OPTION_VARIABLES = ("SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NTASKS_PER_NODE", "SLURM_CPUS_PER_TASK",
                         "SLURM_GPUS", "SLURM_GPUS_PER_TASK", "SLURM_TRES_PER_TASK", "SLURM_GPUS_PER_NODE")
README = "see studies/README.md, 'SLURM'"
_issued_ports: set[int] = set()


def in_allocation(env: Mapping[str, str]) -> bool:
    """Inside a SLURM job (batch script, salloc shell or job step)."""
    return "SLURM_JOB_ID" in env


def in_step(env: Mapping[str, str]) -> bool:
    """Inside a SLURM job step (started by srun), not the batch script itself."""
    return "SLURM_STEP_ID" in env


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").split("(")[0]  # e.g. SLURM_TASKS_PER_NODE=4(x2)
    return int(text) if text.isdigit() else default


def free_port() -> int:
    """A TCP port free on this machine now and not handed out before by this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        if port not in _issued_ports:
            _issued_ports.add(port)
            return port


def srun_command(script: list[str], devices: int, nodes: int, env: Mapping[str, str],
                 python: str) -> list[str]:
    """The ``srun`` step running `python script` on `nodes` x `devices` tasks (see the module doc)."""
    step_tasks = _count(env, "SLURM_STEP_NUM_TASKS", _count(env, "SLURM_NTASKS", 1)) if in_step(env) else 1
    if step_tasks > 1 and nodes > 1:
        raise ConfigError(f"--nodes {nodes}: this study process is one of {step_tasks} tasks of an srun "
                          "step, and its trials cannot span the nodes of the others; run one study process "
                          f"per job, directly in the batch script (lab.py study submit writes one); {README}")
    gpus = _count(env, "SLURM_GPUS_ON_NODE", 0)
    if gpus and devices > gpus:
        raise ConfigError(f"--devices {devices}: this allocation has {gpus} GPU(s) per node "
                          f"(SLURM_GPUS_ON_NODE); expected at most {gpus} processes per node")
    cpus = _count(env, "SLURM_CPUS_PER_TASK", max(1, _count(env, "SLURM_CPUS_ON_NODE", devices) // devices))
    command = ["srun", f"--nodes={nodes}", f"--ntasks={nodes * devices}", f"--ntasks-per-node={devices}",
               "--exact", f"--cpus-per-task={cpus}"]
    if gpus:  # a pinned pool worker's step takes the node's GPUs; its trial keeps its own (apply_trial_gpus)
        step_gpus = gpus if in_step(env) and env.get(TRIAL_GPUS_ENV) else devices
        command += [f"--gpus-per-node={step_gpus}", "--gpu-bind=none"]
    command += ["--kill-on-bad-exit=1", f"--immediate={STEP_WAIT_S}"]
    if in_step(env):
        command.append("--overlap")
        if step_tasks > 1 and env.get("SLURMD_NODENAME"):
            command.append(f"--nodelist={env['SLURMD_NODENAME']}")
    export = f"ALL,MASTER_PORT={free_port()}" + (",MASTER_ADDR=127.0.0.1" if nodes == 1 else "")
    return [*command, f"--export={export}", python, *script]


def apply_trial_gpus(env: MutableMapping[str, str]) -> None:
    """In a trial process, before CUDA starts: see only the GPUs its pool worker was given
    (``TRIAL_GPUS_ENV``), not those srun's step shows (every GPU of the node)."""
    if env.get(TRIAL_GPUS_ENV):
        env["CUDA_VISIBLE_DEVICES"] = env[TRIAL_GPUS_ENV]


def trial_environment(command: list[str], env: Mapping[str, str]) -> dict[str, str]:
    """`env` as the trial process started by `command` must see it: with no ``SLURM_*`` variables
    unless srun starts it, and then without those that would override the step's options."""
    if command[:1] == ["srun"]:
        return {k: v for k, v in env.items() if k not in STEP_OPTION_VARIABLES}
    return {k: v for k, v in env.items() if not k.startswith("SLURM_")}
