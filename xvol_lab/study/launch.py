"""Starting and stopping the process that trains one trial.

A trial runs ``python -m xvol_lab.study.trial TRIAL_DIR`` (one process), under
``torch.distributed.run --standalone`` (several devices on this machine) or as an ``srun`` step
(inside a SLURM allocation, always used there for multi-process trials; `xvol_lab.study.slurm`).
The trial process is the leader of a new process group (killed as a whole) and gets a pipe on
stdin that nothing writes to: when the study process dies, even by SIGKILL, the pipe closes and
every trial process that sees the end of its stdin kills itself (`watch_lifeline`).
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from xvol_lab.errors import ConfigError
from xvol_lab.paths import child_pythonpath
from xvol_lab.study import slurm

log = logging.getLogger(__name__)

LIFELINE_ENV = "XVOL_LIFELINE"
STORAGE_ENV = "XVOL_STUDY_STORAGE"
TRIAL_MODULE = "xvol_lab.study.trial"


def trial_command(trial_dir: Path, devices: int, nodes: int,
                  env: Mapping[str, str] | None = None) -> list[str]:
    """The command that trains the trial in `trial_dir` on `nodes` x `devices` processes.

    One process: the trial module itself. Several, inside a SLURM allocation: an ``srun`` step
    (`xvol_lab.study.slurm.srun_command`). Several on this machine: torch.distributed.run
    ``--standalone``, whose rendezvous binds a port the kernel picks free (port 0), so concurrent
    trials never share one. Multi-node trials outside SLURM are refused: torchrun would have to be
    started on every node (``--nnodes --rdzv-endpoint``), which one study process cannot do.
    """
    env = os.environ if env is None else env
    if devices < 1 or nodes < 1:
        raise ConfigError(f"--devices {devices} --nodes {nodes}: expected numbers >= 1 for study trials")
    script = ["-m", TRIAL_MODULE, str(trial_dir)]
    if devices * nodes == 1:
        return [sys.executable, *script]
    if slurm.in_allocation(env):
        return slurm.srun_command(script, devices, nodes, env, sys.executable)
    if nodes > 1:
        raise ConfigError(f"--nodes {nodes}: multi-node trials run through srun inside a SLURM allocation "
                          "(SLURM_JOB_ID is not set); elsewhere (e.g. Kubernetes) run one study process per "
                          "node with --nodes 1 and a shared --storage; see studies/README.md")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
            *script]


def start_trial(command: list[str], log_file: Path, storage_url: str, *,
                env: Mapping[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """Start `command` in a new process group, output to `log_file`, with the lifeline on stdin and
    the file descriptors `pass_fds` left open (a seed's claim, `xvol_lab.study.seed_share`).

    The trial sees this process's environment with `env` laid over it (e.g. ``CUDA_VISIBLE_DEVICES``
    and thread counts of one of several concurrent trials), less the SLURM variables it must not
    see (`xvol_lab.study.slurm.trial_environment`).
    """
    full = slurm.trial_environment(command, {**os.environ, **(env or {})})
    full[STORAGE_ENV] = storage_url
    full[LIFELINE_ENV] = "1"
    full["PYTHONPATH"] = child_pythonpath(full)
    with log_file.open("ab") as out:
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                env=full, start_new_session=True, pass_fds=pass_fds)


def stop_signal(command: list[str]) -> tuple[signal.Signals, bool]:
    """How `stop_trial` stops the trial started by `command`: (signal, to the whole process group).

    An ``srun`` step gets SIGUSR1 to srun alone: srun forwards it to every task on every node, and
    each trial process takes it for SIGTERM (`usr1_stops_like_sigterm`), so every rank writes the
    stop checkpoint. SIGTERM to srun would make it kill the tasks ("forcing job termination") and
    the running epoch would be lost. Any other trial: SIGTERM to its process group."""
    if command[:1] == ["srun"]:
        return signal.SIGUSR1, False
    return signal.SIGTERM, True


def stop_trial(proc: subprocess.Popen[bytes], grace: float = 60.0) -> None:
    """Stop the trial (`stop_signal`: it checkpoints after its running batch and exits), then, after
    at most `grace` seconds, close the lifeline and SIGKILL whatever is left of its process group
    (data loader workers, a trial that did not stop)."""
    if proc.poll() is None:
        sig, group = stop_signal(list(proc.args) if isinstance(proc.args, list | tuple) else [str(proc.args)])
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
            proc.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def usr1_stops_like_sigterm() -> None:
    """In a trial process: SIGUSR1 (forwarded by srun from `stop_trial`, or sent by SLURM before a
    time limit) stops it as SIGTERM does: Lightning stops after the running batch and the trial
    writes its stop checkpoint."""
    signal.signal(signal.SIGUSR1, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))


def watch_lifeline() -> None:
    """In a trial process started by `start_trial`: die with the study process.

    A thread reads stdin, which the study process never writes to; end of file means the study
    process is gone, and this process kills its process group (itself if it does not lead one).
    Only where the lifeline was set up and stdin is a pipe or socket (not under srun's /dev/null).
    """
    if os.environ.get(LIFELINE_ENV) != "1":
        return
    mode = os.fstat(0).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return

    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        log.error("the study process is gone: stopping this trial")
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="xvol-lifeline", daemon=True).start()
