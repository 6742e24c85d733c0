"""`lab.py study submit`: the batch script (its #SBATCH lines, the worker command, the requeue on
USR1, no password), submission through a fake `sbatch` on PATH, and the refusals (one line, exit 2,
nothing written or submitted)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from xvol_lab.cli import main
from xvol_lab.errors import ConfigError
from xvol_lab.study.sbatch import batch_script, check_time, resources
from xvol_lab.study.storage import STORAGE_ENV

SECRET = "S3cr3t-pw-" + uuid.uuid4().hex[:8]


def sbatch_options(script: str) -> dict[str, str]:
    """The ``#SBATCH --name=value`` lines of a batch script, by name."""
    return dict(re.fullmatch(r"#SBATCH --([\w-]+)(?:=(.*))?", line).groups(default="")
                for line in script.splitlines() if line.startswith("#SBATCH"))


def worker_command(script: str) -> list[str]:
    line = next(line for line in script.splitlines() if " study run " in line)
    assert line.endswith(" &")
    return shlex.split(line[:-2])


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An `sbatch` on PATH that records its arguments (and the script it got) and answers job 4711."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.calls"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nif [ "$1" = --test-only ]; then cat >> {record}.tested; '
                                    'echo "sbatch: Job 4711 to start at now" >&2; exit 0; fi\n'
                                    f'echo "$@" >> {record}\ncat "$2" >> {record}.scripts\n'
                                    'echo "4711;cluster"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.fixture
def submit_env(tmp_path, monkeypatch, tiny_study):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    return tiny_study("tiny")


def test_dry_run_writes_and_prints_the_script_of_one_worker(submit_env, tmp_path, capsys, fake_sbatch):
    secret_file = tmp_path / "storage.url"
    secret_file.write_text(f"postgresql+psycopg://alice:{SECRET}@db/lab\n")
    secret_file.chmod(0o600)
    assert main(["study", "submit", str(submit_env), "--nodes", "2", "--gpus-per-node", "4", "--array", "3",
                 "--time", "1-12:00:00", "--partition", "gpu", "--cpus-per-gpu", "8", "--storage-file",
                 str(secret_file), "--set", "budget.epochs=9", "base.data.batch_size=8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    scripts = list((tmp_path / "runs" / "tiny").glob("submit_*.sbatch"))
    assert len(scripts) == 1 and re.fullmatch(r"submit_\d{8}-\d{6}\.sbatch", scripts[0].name)
    script = scripts[0].read_text()
    assert out == f"{script}written runs/tiny/{scripts[0].name} (--dry-run: not submitted)\n"
    assert not fake_sbatch.exists()  # nothing submitted
    assert sbatch_options(script) == {
        "job-name": "xvol-tiny", "nodes": "2", "ntasks-per-node": "4", "cpus-per-task": "8",
        "gpus-per-node": "4", "time": "1-12:00:00", "partition": "gpu", "array": "0-2",
        "signal": "B:USR1@120", "requeue": "", "open-mode": "append", "export": "ALL",
        "output": str(tmp_path / "runs" / "tiny" / "slurm-%A_%a.out")}
    command = worker_command(script)
    lab = str(Path(__file__).resolve().parents[1] / "lab.py")
    assert command[:5] == [sys.executable, lab, "study", "run", str(submit_env)]
    assert command[5:] == ["--set", "budget.epochs=9", "base.data.batch_size=8", "--devices", "4", "--nodes", "2",
                           "--runs", str(tmp_path / "runs"), "--no-live", "--storage-file", str(secret_file)]
    assert "srun" not in command  # the study process runs directly in the batch script
    assert "trap 'requeue=1; kill -TERM \"$worker\"" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert SECRET not in script and SECRET not in out


def test_the_script_takes_the_storage_from_xvol_storage_without_holding_it(submit_env, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv(STORAGE_ENV, f"postgresql+psycopg://alice:{SECRET}@db/lab")
    assert main(["study", "submit", "tiny.yaml", "--nodes", "1", "--gpus-per-node", "0", "--array", "2",
                 "--dry-run"]) == 0
    script = next((tmp_path / "runs" / "tiny").glob("submit_*.sbatch")).read_text()
    assert f': "${{{STORAGE_ENV}:?' in script and "--storage" not in " ".join(worker_command(script))
    assert "gpus-per-node" not in sbatch_options(script) and "--devices 1 --nodes 1" in script
    assert SECRET not in script and SECRET not in capsys.readouterr().out


def test_submission_goes_through_sbatch(submit_env, tmp_path, capsys, fake_sbatch):
    assert main(["study", "submit", "tiny.yaml", "--nodes", "1", "--gpus-per-node", "8", "--time", "90",
                 "--set", "base.data.batch_size=8"]) == 0
    script = next((tmp_path / "runs" / "tiny").glob("submit_*.sbatch"))
    assert fake_sbatch.read_text().split() == ["--parsable", str(script)]
    assert Path(f"{fake_sbatch}.scripts").read_text() == script.read_text()
    assert Path(f"{fake_sbatch}.tested").read_text() == script.read_text()  # asked first: --test-only
    assert capsys.readouterr().out.endswith(f"submitted batch job 4711: runs/tiny/{script.name}\n")
    # the script is valid bash
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--nodes", "0", "--gpus-per-node", "4"], "--nodes 0: expected a whole number >= 1"),
    (["--nodes", "two", "--gpus-per-node", "4"], "--nodes two: expected a whole number >= 1"),
    (["--nodes", "1", "--gpus-per-node", "-1"], "--gpus-per-node -1: expected a whole number >= 0"),
    (["--nodes", "1", "--gpus-per-node", "4", "--array", "0"], "--array 0: expected a whole number >= 1"),
    (["--nodes", "1", "--gpus-per-node", "4", "--cpus-per-gpu", "0"], "--cpus-per-gpu 0: expected a whole"),
    (["--nodes", "1", "--gpus-per-node", "4", "--time", "2h"], "--time 2h: expected minutes, MM:SS,"),
    (["--nodes", "1", "--gpus-per-node", "4", "--time", "1:75:00"], "--time 1:75:00: 75 is out of range"),
    (["--nodes", "1", "--gpus-per-node", "4", "--partition", "gpu;rm"], "--partition gpu;rm: expected a"),
    (["--nodes", "1", "--gpus-per-node", "4", "--array", "4"], "--array 4: workers on several nodes need"),
    (["--nodes", "1", "--gpus-per-node", "4", "--storage-file", "public.url"], "group or others can read it"),
    (["--nodes", "1", "--gpus-per-node", "4", "--set", "budget.epochs=0"], "budget.epochs"),
])
def test_bad_options_give_one_line_and_write_or_submit_nothing(submit_env, tmp_path, capsys, fake_sbatch,
                                                               args, message):
    (tmp_path / "public.url").write_text("sqlite:////tmp/x.db\n")
    (tmp_path / "public.url").chmod(0o644)
    assert main(["study", "submit", "tiny.yaml", *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("lab.py: error: ") and message in err[0], err
    assert not (tmp_path / "runs").exists() and not fake_sbatch.exists()


def test_a_job_the_cluster_cannot_run_is_refused_before_anything_is_written(submit_env, tmp_path, capsys,
                                                                         monkeypatch):
    """A fake sbatch that refuses --test-only as SLURM does for 4 CPUs per task on a 2-CPU node (the
    real scheduler: tests/test_slurm_real.py)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n'
                                    'echo "allocation failure: Requested node configuration is not available" >&2\n'
                                    'exit 1\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert main(["study", "submit", "tiny.yaml", "--nodes", "1", "--gpus-per-node", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["lab.py: error: --nodes 1 --gpus-per-node 0 --cpus-per-gpu 4: SLURM cannot run this job "
                   "(allocation failure: Requested node configuration is not available); ask for what a node "
                   "of the partition has (`sinfo -o '%P %c %m %G'`)"]
    assert (tmp_path / "calls").read_text() == "--test-only\n"  # asked, never submitted
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("limit", "option"), [(None, "B:USR1@120"), ("90", "B:USR1@120"), ("8", "B:USR1@120"),
                                               ("3", "B:USR1@45"), ("2", "B:USR1@30"), ("0:20", "B:USR1@10"),
                                               ("1-0", "B:USR1@120"), ("UNLIMITED", "B:USR1@120")])
def test_a_short_time_limit_gets_a_shorter_warning(submit_env, limit, option):
    """With USR1 120 s before a 2-minute limit, every requeued attempt was told to stop as it started."""
    res = resources(1, 0, time_limit=limit)
    script = batch_script(["tiny.yaml"], "tiny", res, runs=Path("runs"), workdir=Path("."), python="python",
                          lab=Path("lab.py"), storage_file=None, storage_in_env=False)
    assert sbatch_options(script)["signal"] == option


@pytest.mark.parametrize("text", ["30", "90:00", "12:00:00", "2-0", "2-12:30", "7-00:00:00", "UNLIMITED"])
def test_slurm_time_formats_are_accepted(text):
    assert check_time(text) == text


def test_time_with_hours_past_a_day_is_refused():
    with pytest.raises(ConfigError, match="--time 1-24:00: 24 is out of range"):
        check_time("1-24:00")


@pytest.mark.slow
def test_usr1_hands_the_trial_back_and_requeues_the_job(tmp_path, monkeypatch):
    """The script itself, run by bash with a fake worker and a fake scontrol: SLURM's USR1 becomes
    SIGTERM for the worker, the script waits for it to finish, then requeues the job."""
    record = tmp_path / "record"
    worker = tmp_path / "fake_python"
    worker.write_text(f"#!/bin/bash\ntrap 'echo worker got TERM >> {record}; exit 130' TERM\n"
                      f"echo worker started >> {record}\nwhile :; do sleep 0.05; done\n")
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho scontrol "$@" >> {record}\n')
    for path in (worker, scontrol):
        path.chmod(0o755)
    text = batch_script(["tiny.yaml"], "tiny", resources(1, 0), runs=tmp_path / "runs", workdir=tmp_path,
                        python=str(worker), lab=tmp_path / "lab.py", storage_file=None, storage_in_env=False)
    (tmp_path / "job.sbatch").write_text(text)
    env = {**os.environ, "PATH": f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "77"}
    job = subprocess.Popen(["bash", str(tmp_path / "job.sbatch")], env=env)
    deadline = time.monotonic() + 30
    while not (record.exists() and "started" in record.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    assert job.wait(30) == 130  # the worker's exit status
    assert record.read_text().splitlines() == ["worker started", "worker got TERM", "scontrol requeue 77"]


@pytest.mark.parametrize(("command", "sets", "message"), [
    (["study", "run", "tiny.yaml", "--devices", "2", "--no-live"], ["base.data.batch_size=64"],
     "base.data.batch_size: got 64, expected at most 32: base.data.num_train 64 split among 2 processes "
     "gives each 32, and each training process needs at least one full batch"),
    (["study", "run", "tiny.yaml", "--no-live"], ["base.data.batch_size=100000"],
     "base.data.batch_size: got 100000, expected at most 64: base.data.num_train 64, and each training "
     "process needs at least one full batch"),
    (["study", "submit", "tiny.yaml", "--nodes", "1", "--gpus-per-node", "2"], ["base.data.batch_size=64"],
     "base.data.batch_size: got 64, expected at most 32: base.data.num_train 64 split among 2 processes"),
])
def test_a_batch_no_process_can_fill_is_refused_before_anything_is_written(submit_env, tmp_path, capsys,
                                                                          fake_sbatch, command, sets, message):
    """Zero batches per process failed every trial with "objective val/acc1 is None"; a batch of
    100000 images made the latency measurement take 23 GB and the OOM killer fire."""
    assert main([*command, "--set", *sets]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("lab.py: error: ") and message in err[0], err
    assert not (tmp_path / "runs").exists() and not fake_sbatch.exists()
