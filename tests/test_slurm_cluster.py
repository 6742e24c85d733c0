"""A run started as a task of an srun step uses SLURMEnvironment even in a job named `bash`
(where Lightning alone ignores SLURM), with the step's MASTER_PORT; per-task GPU binding is refused."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from xvol_lab.errors import ConfigError
from xvol_lab.tasks.cluster import cluster_plugins
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.runner import build_trainer

TASK_0_OF_2 = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "bash", "SLURM_STEP_ID": "3", "SLURM_NTASKS": "2",
               "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
               "SLURM_NODEID": "0", "SLURM_NODELIST": "node01", "MASTER_PORT": "23456"}


@pytest.fixture
def srun_task(monkeypatch):
    for name, value in TASK_0_OF_2.items():
        monkeypatch.setenv(name, value)


def test_an_srun_task_gets_slurm_environment_whatever_the_job_name(srun_task, tmp_path):
    ignored = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_checkpointing=False)
    assert not isinstance(ignored.strategy.cluster_environment, SLURMEnvironment)  # the bug, job named bash

    config = load_run_config(None, [f"data.root={tmp_path}", "trainer.accelerator=cpu", "trainer.devices=2",
                                    "trainer.strategy=ddp"])
    trainer = build_trainer(config, tmp_path / "run", progress=False)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.main_port) == (2, 0, 0, 23456)
    assert trainer.world_size == 2


def test_outside_a_step_lightning_chooses(monkeypatch):
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    assert cluster_plugins("cpu", 2) == []


def test_gpus_bound_per_task_are_refused_with_the_flags_that_work(srun_task, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with pytest.raises(ConfigError, match=r"trainer.devices=2: this srun task sees 1 GPU\(s\) "
                                          r"\(CUDA_VISIBLE_DEVICES=5\).*--gpus-per-node and --gpu-bind=none"):
        cluster_plugins("gpu", 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert isinstance(cluster_plugins("gpu", 2)[0], SLURMEnvironment)
