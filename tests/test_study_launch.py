"""How trials are launched inside and outside SLURM (fake SLURM variables, no cluster needed): the
srun step's flags, a free port per trial, --overlap and a bounded wait inside a step, the refusals,
and what a trial process started by an srun-started worker sees (rank 0, no SLURM variables)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from xvol_lab.cli import main
from xvol_lab.errors import ConfigError
from xvol_lab.study import slurm
from xvol_lab.study.launch import start_trial, stop_signal, stop_trial, trial_command
from xvol_lab.study.outcome import INTERRUPTED_EXIT

TRIAL = ["-m", "xvol_lab.study.trial"]


def flags(command: list[str]) -> dict[str, str]:
    """``--name=value`` options of an srun command (before the python executable) by name."""
    options = command[1:command.index(sys.executable)]
    return dict((o[2:].split("=", 1) + [""])[:2] for o in options)


def master_port(command: list[str]) -> int:
    export = dict(item.split("=") for item in flags(command)["export"].split(",")[1:])
    return int(export["MASTER_PORT"])


def test_a_multi_process_trial_in_a_batch_script_is_one_exact_srun_step(tmp_path):
    env = {"SLURM_JOB_ID": "42", "SLURM_CPUS_PER_TASK": "6", "SLURM_GPUS_ON_NODE": "4"}
    command = trial_command(tmp_path, 4, 2, env)
    assert command[0] == "srun" and command[-3:] == [*TRIAL, str(tmp_path)]
    got = flags(command)
    assert got["export"] == f"ALL,MASTER_PORT={master_port(command)}"  # two nodes: Lightning's first node
    assert {k: v for k, v in got.items() if k != "export"} == {
        "nodes": "2", "ntasks": "8", "ntasks-per-node": "4", "exact": "", "cpus-per-task": "6",
        "gpus-per-node": "4", "gpu-bind": "none", "kill-on-bad-exit": "1",
        "immediate": str(slurm.STEP_WAIT_S)}
    # no GPUs in the allocation: none asked for; CPUs shared out between the tasks of the node
    cpu_only = flags(trial_command(tmp_path, 4, 1, {"SLURM_JOB_ID": "42", "SLURM_CPUS_ON_NODE": "16"}))
    assert cpu_only["cpus-per-task"] == "4" and "gpus-per-node" not in cpu_only and "overlap" not in cpu_only


def test_every_trial_gets_its_own_free_rendezvous_port(tmp_path):
    env = {"SLURM_JOB_ID": "42"}
    ports = [master_port(trial_command(tmp_path, 2, 1, env)) for _ in range(2)]
    assert ports[0] != ports[1]
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("", port))  # free: binding it does not raise EADDRINUSE


def test_a_trial_started_from_inside_a_step_overlaps_it(tmp_path):
    one_task = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1"}  # srun --pty bash
    got = flags(trial_command(tmp_path, 2, 2, one_task))
    assert "overlap" in got and got["immediate"] == str(slurm.STEP_WAIT_S) and "nodelist" not in got
    per_node = {**one_task, "SLURM_STEP_NUM_TASKS": "4", "SLURMD_NODENAME": "gpu07"}  # one worker per node
    got = flags(trial_command(tmp_path, 2, 1, per_node))
    assert "overlap" in got and got["nodelist"] == "gpu07"  # its trials stay on its own node
    assert got["export"].endswith(",MASTER_ADDR=127.0.0.1")
    with pytest.raises(ConfigError, match=r"--nodes 2: this study process is one of 4 tasks of an srun step.*"
                                          r"lab.py study submit"):
        trial_command(tmp_path, 2, 2, per_node)


def test_refusals_name_the_right_way(tmp_path):
    with pytest.raises(ConfigError, match=r"--devices 8: this allocation has 4 GPU\(s\) per node"):
        trial_command(tmp_path, 8, 1, {"SLURM_JOB_ID": "42", "SLURM_GPUS_ON_NODE": "4"})
    with pytest.raises(ConfigError, match=r"--nodes 2: multi-node trials run through srun .*Kubernetes.* "
                                          r"--nodes 1"):
        trial_command(tmp_path, 1, 2, {})
    assert trial_command(tmp_path, 2, 1, {})[1:5] == ["-m", "torch.distributed.run", "--standalone",
                                                     "--nproc-per-node=2"]


def test_trial_environment_hides_slurm_unless_srun_starts_the_trial():
    env = {"SLURM_JOB_ID": "42", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_GPUS_PER_TASK": "1",
           "SLURM_NODELIST": "gpu[01-02]", "PATH": "/bin"}
    assert slurm.trial_environment(["python", "-m", "x"], env) == {"PATH": "/bin"}
    assert slurm.trial_environment(["srun", "--nodes=1", "python"], env) == {
        "SLURM_JOB_ID": "42", "SLURM_PROCID": "3", "SLURM_NODELIST": "gpu[01-02]", "PATH": "/bin"}


def run_probe(tmp_path: Path, code: str, **kwargs) -> str:
    log = tmp_path / "probe.log"
    proc = start_trial([sys.executable, "-c", code], log, "sqlite:///unused.db", **kwargs)
    try:
        proc.wait(120)
    finally:
        stop_trial(proc)
    assert proc.returncode == 0, log.read_text()
    return log.read_text().strip().splitlines()[-1]


SRUN_TASK_3_OF_4 = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
                    "SLURM_NODEID": "1", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2",
                    "SLURM_NNODES": "2", "SLURM_JOB_NAME": "study"}


def test_a_worker_started_by_srun_passes_no_slurm_variables_to_its_trials(tmp_path, monkeypatch):
    for name, value in SRUN_TASK_3_OF_4.items():
        monkeypatch.setenv(name, value)
    command = trial_command(tmp_path, 1, 1)
    assert command == [sys.executable, *TRIAL, str(tmp_path)]
    seen = run_probe(tmp_path, "import os; print([k for k in os.environ if k.startswith('SLURM_')], "
                               "os.environ['CUDA_VISIBLE_DEVICES'])", env={"CUDA_VISIBLE_DEVICES": "2,3"})
    assert seen == "[] 2,3"


def test_a_study_run_by_an_srun_started_worker_completes_its_trials(tiny_study, tmp_path, monkeypatch):
    """The worker is task 3 of 4 of an srun step (one per node, the usual pattern); its one-process
    trial used to believe it was rank 3, wrote no result and failed."""
    for name, value in SRUN_TASK_3_OF_4.items():
        monkeypatch.setenv(name, value)
    path = tiny_study("srun", budget={"n_trials": 1, "epochs": 1})
    assert main(["study", "run", str(path), "--runs", str(tmp_path / "runs"), "--no-live"]) == 0
    db = tmp_path / "runs" / "srun" / "study.db"
    trials = optuna.load_study(study_name="srun", storage=f"sqlite:///{db}").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]
    assert 0 <= trials[0].values[0] <= 1


def test_an_srun_step_is_stopped_with_usr1_to_srun_which_forwards_it(tmp_path, monkeypatch):
    """SIGTERM to srun's process group made srun kill the tasks ("forcing job termination"): no rank
    wrote its stop checkpoint. srun gets SIGUSR1 alone (it forwards it to every task); this fake srun
    records which signal came (the real scheduler's run: tests/test_slurm_real.py)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "signals"
    (bin_dir / "srun").write_text(f"#!/bin/bash\ntrap 'echo USR1 >> {record}; exit 75' USR1\n"
                                  f"trap 'echo TERM >> {record}; exit 143' TERM\n"
                                  "echo started\nwhile true; do sleep 0.05; done\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert stop_signal(["srun", "--nodes=1"]) == (signal.SIGUSR1, False)
    assert stop_signal([sys.executable, *TRIAL]) == (signal.SIGTERM, True)
    log = tmp_path / "srun.log"
    proc = start_trial(["srun", "--nodes=1", "python"], log, "sqlite:///unused.db")
    deadline = time.monotonic() + 30
    while "started" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_trial(proc, grace=30)
    assert record.read_text() == "USR1\n" and proc.returncode == INTERRUPTED_EXIT


def test_a_trial_process_takes_usr1_for_sigterm(tmp_path):
    """The tasks of a stopped step get SIGUSR1 (forwarded by srun): a trial process stops as on SIGTERM."""
    code = ("import os, signal, time\n"
            "from xvol_lab.study.launch import usr1_stops_like_sigterm\n"
            "signal.signal(signal.SIGTERM, lambda s, f: (print('SIGTERM', flush=True), os._exit(75)))\n"
            "usr1_stops_like_sigterm()\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "time.sleep(30)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert (done.returncode, done.stdout) == (INTERRUPTED_EXIT, "SIGTERM\n")
