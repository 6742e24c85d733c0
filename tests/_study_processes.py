"""Helpers of the tests that run `lab.py study run` in subprocesses: the command, the storage, the
trial processes, and waiting for a condition."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]


def load(runs: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs / name / 'study.db'}")


def run_command(path: Path, runs: Path) -> list[str]:
    return [sys.executable, str(REPO / "lab.py"), "study", "run", str(path), "--runs", str(runs), "--no-live"]


def trial_pids(marker: str) -> list[int]:
    """Processes whose command line runs a trial and mentions `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "xvol_lab.study.trial" in cmd and marker in cmd:
            pids.append(int(entry.name))
    return pids


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
