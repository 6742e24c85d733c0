"""The environment fingerprint of a run: what, besides its config, decides its numbers.

`fit` writes it as run_dir/fingerprint.json (and a study trial stores it as the trial's
``fingerprint`` user attr). Fields:

- ``threads``: torch's intra-op threads in the training process (`torch.get_num_threads`);
- ``backend``: the PSSA/projection backends that ran ("cpu" C++, "triton", "torch" composite;
  several joined by "+"; "none" when no layer asked, e.g. an all-conv network), and
  ``kernel_build_failed`` / ``kernel_build_error``: a kernel that did not build, so the composite
  path (other rounding) ran instead (`xvol_lab.ops.kernels.backends.kernel_record`);
- ``torch``, ``lightning``, ``optuna``, ``xvol_lab``: the installed versions (None: not installed);
- ``git_commit``, ``git_dirty``: the lab's checkout (None when it is not a git checkout or git is absent);
- ``device``: the device name (the CUDA device's, or the CPU model), ``precision``: Lightning's precision.

`COMPARED` names the fields that change a run's numbers: reports compare only runs equal in them.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

import xvol_lab
from xvol_lab.ops.kernels.backends import kernel_record
from xvol_lab.paths import REPO_ROOT

FINGERPRINT_JSON = "fingerprint.json"
VERSIONS = ("torch", "lightning", "optuna", "xvol_lab")
COMPARED = ("threads", "backend", "device", "precision", *VERSIONS)


def package_version(name: str) -> str | None:
    """The installed version of distribution `name` (None when it is not installed); the imported
    module's for torch (with its build: ``2.9.0+cu128``) and xvol_lab (this checkout)."""
    if name in ("torch", "xvol_lab"):
        return {"torch": torch.__version__, "xvol_lab": xvol_lab.__version__}[name]
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        run = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs
        return None
    return run.stdout if run.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the lab's checkout; (None, None) outside a git checkout or without git."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), re.M)
        if found:
            return found.group(1).strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` for a CUDA device, ``cpu: <model>`` otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}: {cpu_name()}" if device.type == "cpu" else device.type


def environment_fingerprint(device: torch.device, precision: str) -> dict[str, Any]:
    """The fingerprint of this process, for a run on `device` in Lightning precision `precision`
    (call it after training: the kernel backends are those that ran)."""
    kernels = kernel_record()
    failed: dict[str, str] = kernels["build_failed"]  # type: ignore[assignment]
    commit, dirty = git_state()
    return {
        "threads": torch.get_num_threads(),
        "backend": "+".join(kernels["ran"]) or "none",  # type: ignore[arg-type]
        "kernel_build_failed": bool(failed),
        "kernel_build_error": "; ".join(f"{name}: {why}" for name, why in sorted(failed.items())) or None,
        **{name: package_version(name) for name in VERSIONS},
        "git_commit": commit,
        "git_dirty": dirty,
        "device": device_name(device),
        "precision": str(precision),
    }


__all__ = ["COMPARED", "FINGERPRINT_JSON", "VERSIONS", "environment_fingerprint", "git_state",
           "package_version"]
