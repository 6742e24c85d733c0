"""`lab.py study run NAME --workers K`: K trials at once on this machine.

The study process starts K workers, each ``python -m xvol_lab.study.worker NAME`` (the same study,
storage and overrides; `xvol_lab.study.worker.main`) in a process of its own, and waits for them.
They share the study like any workers (`xvol_lab.study.lock`, the exact budget). Each is pinned to its share
of the machine, which its trial processes inherit: GPUs ``i*d .. i*d+d-1`` of the visible ones
(`CUDA_VISIBLE_DEVICES`, d = devices per trial; K x d must not exceed the visible GPUs; inside a SLURM
step by UUID, also in ``xvol_lab.study.slurm.TRIAL_GPUS_ENV``, which the trials' overlapping steps would
otherwise replace, see `xvol_lab.study.slurm`) and
``cores // K`` CPU threads (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`). Without ``--workers``, a study
whose trials train on the CPU with ``base.trainer.threads`` set runs as many as the cores hold
(`default_workers`), else one. Concurrent DDP trials
rendezvous on ports the kernel picks free (`xvol_lab.study.launch`). Stop signals are passed on
to the workers; a worker whose study process dies (even by SIGKILL) stops with it (lifeline).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from xvol_lab.errors import ConfigError
from xvol_lab.paths import child_pythonpath
from xvol_lab.study.launch import LIFELINE_ENV
from xvol_lab.study.signals import STOP_SIGNALS
from xvol_lab.study.slurm import TRIAL_GPUS_ENV, in_step
from xvol_lab.tasks.config import TrainerConfig

log = logging.getLogger(__name__)
WORKER_MODULE = "xvol_lab.study.worker"


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every CUDA device."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_uuids(indices: Sequence[str]) -> list[str]:
    """The UUIDs of the GPUs `indices` (entries of CUDA_VISIBLE_DEVICES: the indices nvidia-smi shows, or
    UUIDs already), from ``nvidia-smi --query-gpu=index,uuid``."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise ConfigError(f"--workers inside a SLURM step pins GPUs by UUID and needs nvidia-smi ({err})") from err
    uuids = dict(line.replace(" ", "").split(",", 1) for line in out.splitlines() if "," in line)
    missing = [i for i in indices if not i.startswith("GPU-") and i not in uuids]
    if missing:
        raise ConfigError(f"CUDA_VISIBLE_DEVICES: GPU(s) {','.join(missing)} not listed by nvidia-smi "
                          f"({','.join(uuids) or 'none'}); expected indices it shows or GPU UUIDs")
    return [i if i.startswith("GPU-") else uuids[i] for i in indices]


def default_workers(trainer: TrainerConfig, cores: int, gpus: Sequence[str]) -> int:
    """Trials at once when ``--workers`` is not given: where the trials train on the CPU (accelerator
    'cpu', or no GPU in `gpus`) with `trainer.threads` set, as many as `cores` hold (cores //
    (threads x devices), at least 1); else 1, a trial then having the whole machine."""
    on_cpu = trainer.accelerator == "cpu" or not gpus
    if trainer.threads is None or not on_cpu:
        return 1
    return max(1, cores // (trainer.threads * max(1, trainer.devices)))


def local_workers(trainer: TrainerConfig) -> int:
    """`default_workers` on this machine: the cores this process may use and the GPUs it sees."""
    gpus = visible_gpus(os.environ) if trainer.accelerator != "cpu" else []
    return default_workers(trainer, len(os.sched_getaffinity(0)), gpus)


def worker_environments(workers: int, devices: int, use_gpus: bool,
                        env: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """The variables each of `workers` (>= 1, as `lab.py` checked) workers runs with (module docstring)."""
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0))
    if workers > cores:
        log.warning("--workers %d exceeds the %d CPU core(s) this process may use: the trials share "
                    "cores (1 thread each) and memory; expected --workers <= %d", workers, cores, cores)
    threads = str(max(1, cores // workers))
    gpus = visible_gpus(env) if use_gpus else []
    if gpus and workers * devices > len(gpus):
        raise ConfigError(f"--workers {workers} --devices {devices}: needs {workers * devices} GPUs, "
                          f"{len(gpus)} visible ({','.join(gpus)}); expected workers x devices <= "
                          f"{len(gpus)}")
    if gpus and in_step(env):
        gpus = gpu_uuids(gpus)
    out = []
    for i in range(workers):
        pinned = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if gpus:
            pinned["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * devices:(i + 1) * devices])
            if in_step(env):
                pinned[TRIAL_GPUS_ENV] = pinned["CUDA_VISIBLE_DEVICES"]
        out.append(pinned)
    return out


def run_workers(study: str, runs: Path, overrides: Sequence[str], environments: Sequence[Mapping[str, str]],
                extra: Mapping[str, str]) -> int:
    """Run a worker of `study` (``python -m xvol_lab.study.worker``) once per environment (laid over this
    one, with `extra`), pass stop signals on, and wait for all; the largest exit code."""
    command = [sys.executable, "-m", WORKER_MODULE, study, "--runs", str(runs)]
    if overrides:
        command += ["--set", *overrides]
    base = {**os.environ, **extra}
    procs = [subprocess.Popen(command, env={**base, **pinned, LIFELINE_ENV: "1", "PYTHONPATH": child_pythonpath(base)},
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
             for pinned in environments]

    def forward(signum: int, frame: FrameType | None) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        codes = [proc.wait() for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max(128 - c if c < 0 else c for c in codes)
