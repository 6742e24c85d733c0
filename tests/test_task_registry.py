"""The task registry (`xvol_lab.tasks.registry`) is the one place that knows a task."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import lightning.pytorch as L
import pytest

from xvol_lab.data.build import DATAMODULES
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.registry import TASKS, Task, task_record

PACKAGE = Path(__file__).resolve().parents[1] / "xvol_lab"
REGISTRY = PACKAGE / "tasks" / "registry.py"
TASK_NAME = re.compile("[\"'](" + "|".join(map(re.escape, TASKS)) + ")[\"']")  # a task name in quotes


def test_no_module_but_the_registry_names_a_task():
    """No branch on a task name (``task == "detection"``, ``task in (...)``, a dict keyed by task names)
    outside the registry: every other module asks the task's record."""
    found = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if path != REGISTRY
             for number, line in enumerate(path.read_text().splitlines(), start=1) if TASK_NAME.search(line)]
    assert found == []


def test_the_check_above_finds_a_branch_on_a_task_name():
    assert TASK_NAME.search('    if config.task == "semantic_segmentation":')
    assert TASK_NAME.search("    TABLE = {'detection': 1}")
    assert not TASK_NAME.search('    if task_record(config.task).output == "pixels":')


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_a_complete_record(name: str):
    record = task_record(name)
    assert record.name == name and name in get_args(Task)
    assert issubclass(record.lightning_module(), L.LightningModule)
    assert record.datasets and all(dataset in DATAMODULES for dataset in record.datasets)
    config = load_run_config(overrides=[f"task={name}"])  # the record's defaults make a valid config
    assert config.task == name and config.data.name in record.datasets
    network = record.build_network(config.model, 3, config.detector)
    assert network.training and not any(getattr(m, "deploy", False) for m in network.modules())


def test_the_tasks_are_the_literal_type_of_run_configs():
    assert set(TASKS) == set(get_args(Task))
