"""`lab.py study run --workers K`: each worker's GPUs and CPU threads, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xvol_lab.cli.main import main
from xvol_lab.errors import ConfigError
from xvol_lab.study.pool import default_workers, worker_environments
from xvol_lab.tasks.config import TrainerConfig


def test_each_worker_gets_its_own_gpus_and_its_share_of_the_cores():
    threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
    envs = worker_environments(2, 2, True, {"CUDA_VISIBLE_DEVICES": "0,1,5,7"})
    assert envs == [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": "0,1"},
                    {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": "5,7"}]
    cpu = worker_environments(2, 1, False, {"CUDA_VISIBLE_DEVICES": "0"})  # accelerator: cpu
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in cpu)
    with pytest.raises(ConfigError) as err:
        worker_environments(3, 2, True, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert str(err.value) == ("--workers 3 --devices 2: needs 6 GPUs, 4 visible (0,1,2,3); "
                              "expected workers x devices <= 4")


def test_more_workers_than_cores_warns_once_and_still_runs(caplog):
    cores = len(os.sched_getaffinity(0))
    with caplog.at_level("WARNING", logger="xvol_lab.study.pool"):
        envs = worker_environments(cores, 1, False, {})
    assert caplog.records == [] and len(envs) == cores
    with caplog.at_level("WARNING", logger="xvol_lab.study.pool"):
        envs = worker_environments(cores + 1, 1, False, {})
    assert [r.getMessage() for r in caplog.records] == [
        f"--workers {cores + 1} exceeds the {cores} CPU core(s) this process may use: the trials share "
        f"cores (1 thread each) and memory; expected --workers <= {cores}"]
    assert len(envs) == cores + 1 and {e["OMP_NUM_THREADS"] for e in envs} == {"1"}


@pytest.mark.parametrize("trainer, cores, gpus, workers", [
    (TrainerConfig(threads=1), 2, [], 2),  # CPU trials of 1 thread: one per core
    (TrainerConfig(threads=2), 16, [], 8),
    (TrainerConfig(threads=2, accelerator="cpu", devices=2), 16, ["0"], 4),  # DDP on the CPU: 2 processes each
    (TrainerConfig(threads=4), 2, [], 1),  # more threads than cores: still one trial
    (TrainerConfig(), 16, [], 1),  # threads not set: a trial has the whole machine
    (TrainerConfig(threads=1), 16, ["0", "1"], 1),  # the trials train on the GPU
])
def test_without_workers_cpu_trials_with_threads_fill_the_cores(trainer, cores, gpus, workers):
    assert default_workers(trainer, cores, gpus) == workers


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_bad_workers_is_one_line_exit_2_and_creates_nothing(tiny_study, tmp_path: Path, capsys, bad):
    path = tiny_study()
    assert main(["study", "run", str(path), "--runs", str(tmp_path / "runs"), f"--workers={bad}"]) == 2
    assert capsys.readouterr().err == f"lab.py: error: --workers {bad}: expected an integer >= 1\n"
    assert not (tmp_path / "runs").exists()


FAKE_NVIDIA_SMI = """#!/bin/sh
# nvidia-smi of a node with 4 GPUs, as seen inside a SLURM step that holds them
[ "$1" = "--query-gpu=index,uuid" ] || exit 9
printf '0, GPU-0aaa\\n1, GPU-1bbb\\n2, GPU-2ccc\\n3, GPU-3ddd\\n'
"""


def test_a_pool_inside_a_gpu_step_gives_each_trial_its_own_gpus(tmp_path, monkeypatch):
    """srun --overlap steps may share GPUs: each trial's step takes the node's GPUs and the trial keeps the
    UUIDs its worker was given, so the GPU lists the trials end up with are disjoint."""
    from xvol_lab.study import slurm

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    step = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1", "SLURM_GPUS_ON_NODE": "4",
            "SLURM_CPUS_ON_NODE": "16", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "SLURMD_NODENAME": "gpu7"}
    seen = []
    for pinned in worker_environments(2, 2, True, step):
        worker = {**step, **pinned}
        command = slurm.srun_command(["-m", "xvol_lab.study.trial", "DIR"], 2, 1, worker, "python")
        assert "--overlap" in command and "--gpus-per-node=4" in command and "--gpu-bind=none" in command
        trial = slurm.trial_environment(command, worker)
        trial["CUDA_VISIBLE_DEVICES"] = "0,1,2,3"  # what srun shows every task of a step holding the 4 GPUs
        slurm.apply_trial_gpus(trial)
        seen.append(trial["CUDA_VISIBLE_DEVICES"].split(","))
    assert seen == [["GPU-0aaa", "GPU-1bbb"], ["GPU-2ccc", "GPU-3ddd"]]
    outside = worker_environments(2, 2, True, {k: v for k, v in step.items() if k != "SLURM_STEP_ID"})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in outside] == ["0,1", "2,3"]  # the batch script: steps never overlap
    assert all(slurm.TRIAL_GPUS_ENV not in e for e in outside)
    with pytest.raises(ConfigError, match=r"^CUDA_VISIBLE_DEVICES: GPU\(s\) 6 not listed by nvidia-smi"):
        worker_environments(1, 1, True, {**step, "CUDA_VISIBLE_DEVICES": "6"})
