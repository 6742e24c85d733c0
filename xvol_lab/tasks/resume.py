"""Continuing a run: the run folder's config.yaml is the config.

A resume may change `trainer.max_epochs` (train longer, or stop sooner) and `trainer.threads` (the
CPU threads of the machine it continues on), and the processes it runs
on (`trainer.devices`, `trainer.strategy`, `trainer.num_nodes`) when the checkpoint was saved at an
epoch end (a mid-epoch stop holds each process's position in its share of the epoch). Anything
else that differs from the stored config is refused, one line per key; the stored config.yaml is
never rewritten.
"""

from __future__ import annotations

from pathlib import Path

import torch

from xvol_lab.errors import ConfigError
from xvol_lab.schema import flatten
from xvol_lab.tasks.callbacks import PreemptionCheckpoint
from xvol_lab.tasks.config import RunConfig, load_run_config

CONFIG_YAML = "config.yaml"
ANY_RESUME = ("trainer.max_epochs", "trainer.threads")
AT_EPOCH_END = ("trainer.devices", "trainer.strategy", "trainer.num_nodes")


def stored_config(run_dir: Path) -> RunConfig | None:
    """The config a run folder was trained with (its config.yaml), None where it has none."""
    path = Path(run_dir) / CONFIG_YAML
    return load_run_config(path) if path.is_file() else None


def at_epoch_end(checkpoint: Path) -> bool:
    """Whether `checkpoint` was saved at the end of an epoch (not by a mid-epoch preemption stop)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return PreemptionCheckpoint.STATE_KEY not in state


def resumed_config(stored: RunConfig, given: RunConfig, checkpoint: Path, run_dir: Path) -> RunConfig:
    """`given` (the stored config with what the caller asked for applied) where it differs from
    `stored` only in keys a resume from `checkpoint` may change; ConfigError otherwise, one line per
    key: the key, the stored value, the given one."""
    old, new = flatten(stored), flatten(given)
    changed = [key for key in old if old[key] != new.get(key)]
    allowed = set(ANY_RESUME)
    if any(key in AT_EPOCH_END for key in changed) and at_epoch_end(checkpoint):
        allowed |= set(AT_EPOCH_END)
    refused = [key for key in changed if key not in allowed]
    if refused:
        where = Path(run_dir) / CONFIG_YAML
        raise ConfigError("\n".join(
            f"--resume {checkpoint}: {key}: stored {old[key]!r} ({where}), given {new.get(key)!r}; a resumed "
            f"run keeps its config (it may change {', '.join(ANY_RESUME)}, and {', '.join(AT_EPOCH_END)} "
            "from an epoch-end checkpoint)" for key in refused))
    return given
