"""Small JSON files of a trial folder, written atomically (temporary file + os.replace)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

REQUEST = "trial.json"  # what the study process asks the trial process to run
PROGRESS = "progress.json"  # where the trial process is (epoch, batch), for the live view
RESULT = "result.json"  # how the trial ended: state, reason, metrics, measures, objective values
LOG = "trial.log"  # output of every process of the trial

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it the usual permissions
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, allow_nan=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if there is none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
