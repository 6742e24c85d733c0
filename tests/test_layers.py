"""Static checks: the import layers of docs/architecture.md (`lint-imports`, contracts in pyproject.toml) and ruff."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency: pip install -e '.[dev]'"
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_reading_a_study_file_imports_neither_lightning_nor_optuna() -> None:
    """Study files, run configs and metric names load without the training stack (the package
    exports of xvol_lab.data, .tasks and .study are imported on first use)."""
    code = ("import sys, xvol_lab.study.config; "
            "print(sorted(m for m in ('lightning', 'optuna', 'xvol_lab.tasks.runner') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_import_graph_has_no_circle() -> None:
    import grimp  # installed with import-linter

    graph = grimp.build_graph("xvol_lab")
    circles = sorted((m, n) for m in graph.modules for n in graph.find_modules_directly_imported_by(m)
                     if graph.chain_exists(importer=n, imported=m))
    assert circles == []


def test_ruff_finds_nothing() -> None:
    """The lint rules of pyproject.toml hold over the package, the CLI, the benchmarks and the tests."""
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert exe, "ruff is a dev dependency: pip install -e '.[dev]'"
    done = subprocess.run([exe, "check", "--no-cache", "xvol_lab", "lab.py", "benchmarks", "tests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
