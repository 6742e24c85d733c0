"""`lab.py study run --workers K`: each worker's GPUs and CPU threads, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xvol_lab.cli.main import main
from xvol_lab.errors import ConfigError
from xvol_lab.study.pool import worker_environments


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


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_bad_workers_is_one_line_exit_2_and_creates_nothing(tiny_study, tmp_path: Path, capsys, bad):
    path = tiny_study()
    assert main(["study", "run", str(path), "--runs", str(tmp_path / "runs"), f"--workers={bad}"]) == 2
    assert capsys.readouterr().err == f"lab.py: error: --workers {bad}: expected an integer >= 1\n"
    assert not (tmp_path / "runs").exists()
