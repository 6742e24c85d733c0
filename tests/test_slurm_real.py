"""`lab.py study submit` against a real one-node SLURM (`.ci/slurm.sh`; skipped where there is none):
a submitted study runs to its exact budget; USR1 (`scancel --signal=USR1 --batch`) and `scontrol
requeue` mid-epoch of a 1-process trial, and USR1 mid-epoch of a 2-task srun trial (two stand-in
GPUs): the job is requeued, the trial continues mid-epoch from its stop checkpoint and ends exactly
as an uninterrupted run; a request the node can never satisfy is refused before submission; an array
of two workers shares one study in PostgreSQL (where XVOL_TEST_POSTGRES_URL names a server).

One node cannot show trials spanning several nodes: those stay with the fake SLURM variables of
tests/test_study_launch.py. One test waits for a real `--time 2` limit (about 2.5 minutes). The
uninterrupted runs are shared by the tests (module fixtures), trial processes pause 0.1 s after
each batch (`XVOL_FAULT_BATCH_S`) so that a stop lands mid-epoch, and the requeue wait is skipped
(`scontrol update jobid=N StartTime=now`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from xvol_lab.study.faults import BATCH_PAUSE_ENV
from xvol_lab.study.ledger import retry_history, tally
from xvol_lab.study.storage import STORAGE_ENV
from xvol_lab.tasks.callbacks import PreemptionCheckpoint

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
REPO = Path(__file__).resolve().parents[1]
JOB_WAIT = 240  # seconds a job may take to finish (trial processes start slowly on a busy 2-core machine)
BATCHES = 32  # training batches per epoch (per process): a few seconds, so that a stop lands mid-epoch
BATCH_PAUSE_S = 0.1  # after each batch (xvol_lab.study.faults): an epoch lasts >= 3 s on any machine


def study_file(folder: Path, name: str, n_trials: int, processes: int = 1) -> Path:
    """A study whose trial trains 2 epochs of 32 batches per process in a few seconds (no C++ kernels
    to build)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "description": "real SLURM test study",
        "base": {"data": {"name": "shapes", "root": str(folder / "data"), "image_size": 32,
                          "num_train": 16 * BATCHES * processes, "num_val": 32, "batch_size": 16, "num_workers": 0},
                 "model": {"block": "basic", "depths": [1, 1, 1, 1], "width_mult": 0.25, "stem": "small"},
                 "trainer": {"accelerator": "cpu", "limit_val_batches": 1}},
        "space": {"stages": {3: {"op": ["conv", "pointwise"]}}},
        "objectives": [{"metric": "val/acc1", "direction": "maximize"}],
        "sampler": {"name": "grid"},
        "budget": {"n_trials": n_trials, "epochs": 2},
        "heartbeat": 2,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def environment(pause: float = BATCH_PAUSE_S) -> dict[str, str]:
    """What the submitting shell exports (sbatch passes it on to the job: --export=ALL)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           BATCH_PAUSE_ENV: str(pause)}
    env.pop("XVOL_STORAGE", None)
    return env


def submit(folder: Path, study: Path, *options: str, pause: float = BATCH_PAUSE_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "lab.py"), "study", "submit", str(study), "--runs",
                           "runs", "--nodes", "1", "--cpus-per-gpu", "1", *options], cwd=folder,
                          env=environment(pause), capture_output=True, text=True, timeout=120)


def job_id(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r"^submitted batch job (\d+): ", done.stdout, re.MULTILINE)
    assert match, done.stdout[-500:]
    return match.group(1)


def squeue(job: str) -> str | None:
    """``STATE REASON`` of `job` (of one of its array tasks, ``<job>_<i>``), '' once it left the queue,
    None when squeue failed (a busy controller times out: that is not a finished job)."""
    done = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return None
    for line in done.stdout.splitlines():
        task, state = line.split(" ", 1)
        if task.split("_", 1)[0] == job:
            return state
    return ""


def node_idle() -> bool:
    """Whether the one node is idle (no job running or completing on it)."""
    return subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                          timeout=30).stdout.split() == ["idle"]


def wait(predicate: Callable[[], Any], what: str, timeout: float = JOB_WAIT, *, job: str | None = None,
         log: Path | None = None) -> Any:
    """Poll `predicate` until it is truthy. A requeued `job` waits for its BeginTime (about 2 minutes);
    it is released once the node is idle again, to start 2 s later, and not again for 10 s. Released
    while its previous instance still completes, or within the second slurmd revoked its credential
    (credentials are compared by the second), slurmd refuses the launch: "Killing non-startable batch
    job: Job credential revoked", and the job is gone."""
    end = time.monotonic() + timeout
    released = -float("inf")
    while time.monotonic() < end:
        found = predicate()
        if found:
            return found
        if job is not None and time.monotonic() - released > 10 and (squeue(job) or "").startswith(
                "PENDING BeginTime") and node_idle():
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now+2"], capture_output=True,
                           timeout=30)
            released = time.monotonic()
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def finished(job: str, folder: Path, name: str, timeout: float = JOB_WAIT) -> dict[str, Any]:
    """Wait for `job` to leave the queue; the study's trials and the job's log."""
    log = folder / "runs" / name / f"slurm-{job}.out"
    wait(lambda: squeue(job) == "", f"job {job} to finish", timeout, job=job, log=log)
    storage = f"sqlite:///{folder / 'runs' / name / 'study.db'}"
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    return {"trials": trials, "log": log.read_text(), "seed": folder / "runs" / name / "trial_0" / "seed_0"}


def mid_epoch(seed: Path, epoch: int) -> Callable[[], bool]:
    """True while trial_0's seed trains in the first half of `epoch` (1-based), past its first batch."""
    def check() -> bool:
        try:
            progress = json.loads((seed / "progress.json").read_text())
        except (OSError, ValueError):
            return False
        return progress.get("epoch") == epoch and 1 <= progress.get("batch", 0) <= BATCHES // 2
    return check


def result(seed: Path) -> dict[str, Any]:
    return json.loads((seed / "result.json").read_text())


def stop_position(seed: Path) -> dict[str, int]:
    """Where the stop checkpoint (last.ckpt) left the training loader: its epoch and batches done."""
    checkpoint = torch.load(seed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return checkpoint[PreemptionCheckpoint.LOADER_KEY][0]


def run_uninterrupted(folder: Path, name: str, n_trials: int, gpus: int) -> dict[str, Any]:
    job = job_id(submit(folder, study_file(folder, name, n_trials, max(1, gpus)), "--gpus-per-node", str(gpus)))
    return finished(job, folder, name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-trial study on one CPU process per trial, submitted and run uninterrupted."""
    return run_uninterrupted(tmp_path_factory.mktemp("reference"), "reference", 2, 0)


@pytest.fixture(scope="module")
def reference_two_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One trial as a 2-task srun step (two stand-in GPUs, DDP on CPU), run uninterrupted."""
    return run_uninterrupted(tmp_path_factory.mktemp("reference2"), "two", 1, 2)


def test_a_submitted_study_runs_to_its_exact_budget(reference):
    trials = reference["trials"]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert sorted(t.params["stage3.op"] for t in trials) == ["conv", "pointwise"]
    assert "reference: 2/2 finished (2 complete, 0 pruned, 0 failed)" in reference["log"]
    assert all(result(Path(t.user_attrs["run_dir"]))["values"] == t.values for t in trials)


def test_a_trial_stopped_by_usr1_then_requeued_mid_epoch_ends_as_an_uninterrupted_run(reference, tmp_path):
    study = study_file(tmp_path, "stopped", 1)
    job = job_id(submit(tmp_path, study, "--gpus-per-node", "0"))
    seed = tmp_path / "runs" / "stopped" / "trial_0" / "seed_0"
    log = tmp_path / "runs" / "stopped" / f"slurm-{job}.out"
    wait(mid_epoch(seed, 1), "trial 0 in the middle of epoch 1", job=job, log=log)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)  # the time limit is near
    wait(lambda: (seed / "checkpoints" / "last.ckpt").is_file(), "the stop checkpoint", job=job, log=log)
    first = stop_position(seed)
    assert first["epoch"] == 0 and 0 < first["batches"] < BATCHES  # stopped mid-epoch
    wait(mid_epoch(seed, 2), "the requeued job to train epoch 2", job=job, log=log)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)  # e.g. preempted by the scheduler
    wait(lambda: stop_position(seed)["epoch"] == 1 and stop_position(seed)["batches"] > 0,
         "the second stop checkpoint", job=job, log=log)
    second = stop_position(seed)
    assert 0 < second["batches"] < BATCHES
    done = finished(job, tmp_path, "stopped")
    trials = done["trials"]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert retry_history(trials[2]) == [0, 1] and tally(trials).finished == 1  # exact budget
    assert done["log"].count("planned stop (stop signal to the study process); queued again, not counted") == 2
    assert (seed / "trial.log").read_text().count("Restored all states from the checkpoint") == 2
    same = next(t for t in reference["trials"] if t.params == trials[2].params)
    expected = result(Path(same.user_attrs["run_dir"]))
    assert result(seed)["metrics"] == expected["metrics"]  # exactly as uninterrupted (CPU)
    assert trials[2].values == same.values


@pytest.mark.slow
def test_a_real_time_limit_stops_the_trial_and_the_requeued_job_finishes_it(reference, tmp_path):
    """`--time 2`: SLURM itself sends USR1 before the limit (a quarter of it, 30 s, and up to 60 s
    earlier by its timer's resolution) while the trial, slowed to 1.5 s a batch, is still training;
    the job is requeued and the retry ends as an uninterrupted run. `budget.max_retries=0`: the
    planned stops count against nothing."""
    study = study_file(tmp_path, "timed", 1)
    job = job_id(submit(tmp_path, study, "--gpus-per-node", "0", "--time", "2", "--set", "budget.max_retries=0",
                        pause=1.5))  # 2 epochs of 32 batches: > 96 s of training
    done = finished(job, tmp_path, "timed", timeout=2 * JOB_WAIT)
    trials = done["trials"]
    assert trials[-1].state == TrialState.COMPLETE and tally(trials).finished == 1  # exact budget
    assert len(trials) >= 2 and all(t.state == TrialState.FAIL for t in trials[:-1])  # stopped, retried
    assert done["log"].count("planned stop (stop signal to the study process); queued again, not counted") == \
        len(trials) - 1
    same = next(t for t in reference["trials"] if t.params == trials[-1].params)
    assert result(done["seed"])["metrics"] == result(Path(same.user_attrs["run_dir"]))["metrics"]


def test_a_two_task_trial_runs_as_one_srun_step_on_the_two_gpus(reference_two_tasks):
    trials = reference_two_tasks["trials"]
    assert [t.state for t in trials] == [TrialState.COMPLETE] and tally(trials).finished == 1
    log = (reference_two_tasks["seed"] / "trial.log").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert "two: 1/1 finished (1 complete, 0 pruned, 0 failed)" in reference_two_tasks["log"]


def test_a_two_task_trial_stopped_by_usr1_mid_epoch_ends_as_an_uninterrupted_run(reference_two_tasks, tmp_path):
    """Every rank of the srun step writes its part of the stop checkpoint (srun forwards USR1; SIGTERM
    to srun used to kill the tasks), and all stop after the same batch (xvol_lab/tasks/stop.py: ranks
    signalled a moment apart crashed with "Connection reset by peer")."""
    job = job_id(submit(tmp_path, study_file(tmp_path, "two", 1, 2), "--gpus-per-node", "2"))
    seed = tmp_path / "runs" / "two" / "trial_0" / "seed_0"
    log = tmp_path / "runs" / "two" / f"slurm-{job}.out"
    wait(mid_epoch(seed, 1), "the 2-task trial in the middle of epoch 1", job=job, log=log)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
    wait(lambda: (seed / "checkpoints" / "last.ckpt").is_file(), "the stop checkpoint", job=job, log=log)
    position = stop_position(seed)
    assert position["epoch"] == 0 and 0 < position["batches"] < BATCHES
    done = finished(job, tmp_path, "two")
    trials = done["trials"]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE] and tally(trials).finished == 1
    assert "forcing job termination" not in (seed / "trial.log").read_text()
    assert result(seed)["metrics"] == result(reference_two_tasks["seed"])["metrics"]
    assert trials[1].values == reference_two_tasks["trials"][0].values


def test_a_request_the_node_can_never_satisfy_is_refused_before_submission(tmp_path):
    study = study_file(tmp_path, "impossible", 1)
    cpus = os.cpu_count() or 1  # the default --cpus-per-gpu 4 on a 2-CPU node: pending forever
    done = submit(tmp_path, study, "--gpus-per-node", "0", "--cpus-per-gpu", str(max(4, cpus + 1)))
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "SLURM cannot run this job" in lines[0] and done.stdout == ""
    assert not (tmp_path / "runs").exists()
    jobs = subprocess.run(["squeue", "-h", "-n", "xvol-impossible"], capture_output=True, text=True, timeout=30)
    assert jobs.stdout.strip() == ""  # nothing submitted


POSTGRES = os.environ.get("XVOL_TEST_POSTGRES_URL")


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES, reason="XVOL_TEST_POSTGRES_URL is not set (`bash .ci/postgres.sh` starts a server)")
def test_an_array_of_two_workers_shares_one_study_on_postgresql(reference, tmp_path, monkeypatch):
    """Two array tasks run at once on the node (one CPU each), each a worker of the same study in
    PostgreSQL ($XVOL_STORAGE, exported by sbatch): each grid point is trained once, by one of them."""
    name = f"array_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(STORAGE_ENV, POSTGRES)
    study = study_file(tmp_path, name, 2)
    done = subprocess.run([sys.executable, str(REPO / "lab.py"), "study", "submit", str(study), "--runs", "runs",
                           "--nodes", "1", "--gpus-per-node", "0", "--cpus-per-gpu", "1", "--array", "2"],
                          cwd=tmp_path, env={**environment(), STORAGE_ENV: POSTGRES}, capture_output=True,
                          text=True, timeout=120)
    job = job_id(done)
    wait(lambda: squeue(job) == "", f"array job {job} to finish", job=job)
    trials = optuna.load_study(study_name=name, storage=POSTGRES).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 and tally(trials).finished == 2
    assert sorted(t.params["stage3.op"] for t in trials) == ["conv", "pointwise"]
    logs = [(tmp_path / "runs" / name / f"slurm-{job}_{task}.out").read_text() for task in (0, 1)]
    assert all(f"{name}: 2/2 finished" in log for log in logs)  # both workers ran and saw the end
    for trial in trials:  # as the single worker's run of the same grid point
        same = next(t for t in reference["trials"] if t.params == trial.params)
        assert result(Path(trial.user_attrs["run_dir"]))["metrics"] == result(Path(same.user_attrs["run_dir"]))[
            "metrics"]
