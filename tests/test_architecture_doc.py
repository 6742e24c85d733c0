"""docs/architecture.md names only paths and modules that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PATH = re.compile(r"\b(?:xvol_lab|tests|studies|benchmarks|data|docs)/[\w./-]*\w")  # xvol_lab/study/seeds.py
MODULE = re.compile(r"\bpython -m (xvol_lab(?:\.\w+)+)")  # python -m xvol_lab.study.worker


def test_every_path_the_architecture_document_names_exists():
    text = DOC.read_text()
    paths = sorted(set(PATH.findall(text)))
    assert len(paths) > 40  # the document names the modules, not just a few folders
    assert [p for p in paths if not (ROOT / p).exists()] == []


def test_every_module_it_runs_exists():
    modules = sorted(set(MODULE.findall(DOC.read_text())))
    assert modules == ["xvol_lab.study.trial", "xvol_lab.study.worker"]
    assert all(importlib.util.find_spec(m) is not None for m in modules)


def test_the_path_pattern_finds_a_missing_module():
    assert PATH.findall("see xvol_lab/study/nowhere.py, then") == ["xvol_lab/study/nowhere.py"]
    assert not (ROOT / "xvol_lab/study/nowhere.py").exists()
