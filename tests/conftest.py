"""Shared fixtures: one intra-op thread for tiny models, run `lab.py` in a subprocess, and write a tiny
study file (16 px, 1 block per stage)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if nested else value
    return out


@pytest.fixture(autouse=True)
def no_storage_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use the storage they name: an exported XVOL_STORAGE (the default storage) is ignored."""
    monkeypatch.delenv("XVOL_STORAGE", raising=False)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread for a module's tests: tiny models (training, export checks, FLOP
    counts) run faster and steadier so on a busy 2-core machine. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def lab_env() -> dict[str, str]:
    """Environment for `lab.py` subprocesses: the repo importable, one thread per process."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def run_lab(lab_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_lab(*args, timeout=...)``: run ``python lab.py ARGS`` in `tmp_path`, capture its output."""
    def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(REPO / "lab.py"), *args], cwd=tmp_path, env=lab_env,
                              capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture
def tiny_study(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_study(name, **changes)``: write tmp_path/NAME.yaml, a study that trains in seconds.

    `changes` replace top-level keys, except `base`, which is merged section by section."""
    base = {
        "description": "tiny test study",
        "base": {"data": {"name": "shapes", "root": str(tmp_path / "data"), "image_size": 16, "num_train": 64,
                          "num_val": 32, "batch_size": 32, "num_workers": 0},
                 "model": {"block": "basic", "depths": [1, 1, 1, 1], "width_mult": 0.125, "stem": "small"},
                 "trainer": {"accelerator": "cpu", "limit_train_batches": 2, "limit_val_batches": 1}},
        "space": {"stages": {3: {"op": ["conv", "pssa", "xvol_pssa"], "shift": [1, 2]}}},
        "objectives": [{"metric": "val/acc1", "direction": "maximize"}],
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
        "budget": {"n_trials": 3, "epochs": 2},
        "heartbeat": 1,
    }

    def write(name: str = "tiny", **changes: Any) -> Path:
        path = tmp_path / f"{name}.yaml"
        data = {**base, **changes, "base": _merge(base["base"], changes.get("base", {}))}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path
    return write


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A running SLURM (`.ci/slurm.sh`, which `.ci/run` starts and announces with XVOL_TEST_SLURM=1);
    the test is skipped, with one line, where there is none."""
    if os.environ.get("XVOL_TEST_SLURM") != "1":
        pytest.skip("no SLURM here: XVOL_TEST_SLURM is not 1 (`bash .ci/slurm.sh` starts one, then export it)")
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"no SLURM here: sinfo: {err}")
    if done.returncode != 0 or not done.stdout.strip():
        pytest.skip(f"no SLURM here: sinfo answered {' '.join((done.stderr or done.stdout).split())[:200]!r}")
