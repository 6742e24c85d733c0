"""The repository root, and the import path that makes child processes import this checkout."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # holds lab.py, studies/, benchmarks/ beside xvol_lab/


def child_pythonpath(env: Mapping[str, str]) -> str:
    """PYTHONPATH for a child ``python -m xvol_lab...`` process: the repository root first, so that
    it imports this checkout's package (not another installed copy), then `env`'s own entries."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
