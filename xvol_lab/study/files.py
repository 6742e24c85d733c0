"""Small JSON files of a trial folder, written atomically with the usual permissions (`xvol_lab.atomic`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xvol_lab.atomic import write_text

REQUEST = "trial.json"  # what the study process asks the trial process to run
PROGRESS = "progress.json"  # where the trial process is (epoch, batch), for the live view
RESULT = "result.json"  # how the trial ended: state, reason, metrics, measures, objective values
LOG = "trial.log"  # output of every process of the trial


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` atomically."""
    write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if there is none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
