"""What `lab.py study run` was given, kept in the study's storage so that a later run continues with it.

The study's user attrs hold ``xvol:settings`` (the ``--set`` overrides, ``--trials`` and ``--seeds``)
and ``xvol:config`` (the study config they resolve to). A later `study run NAME` on the same storage
applies the stored settings first, then what it is given (a ``--set`` of the same key replaces the
stored one, ``--trials`` and ``--seeds`` replace theirs); `study status`, `list`, the report and
the export read the study with the stored settings, so they count the budget `run` works to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from xvol_lab.errors import ConfigError
from xvol_lab.schema import parse_override, to_dict, with_overrides
from xvol_lab.study.config import StudyConfig, load_study_config
from xvol_lab.study.storage import identity_differences

SETTINGS = "xvol:settings"
CONFIG = "xvol:config"


@dataclass(frozen=True)
class RunSettings:
    """The ``--set`` overrides, ``--trials`` and ``--seeds`` of a `study run` (None: not given)."""

    overrides: tuple[str, ...] = ()
    trials: int | None = None
    seeds: int | None = None

    def then(self, given: RunSettings) -> RunSettings:
        """These settings, then `given` on top (its --set keys replace these ones)."""
        keys = {tuple(parse_override(text)[0]) for text in given.overrides}
        kept = tuple(text for text in self.overrides if tuple(parse_override(text)[0]) not in keys)
        trials = given.trials or (None if ("budget", "n_trials") in keys else self.trials)
        seeds = given.seeds or (None if ("budget", "seeds") in keys else self.seeds)
        return RunSettings(kept + given.overrides, trials, seeds)

    def override_list(self) -> list[str]:
        """The settings as study overrides (``--trials 3`` is ``budget.n_trials=3``)."""
        budget = [f"budget.n_trials={self.trials}"] if self.trials is not None else []
        return [*self.overrides, *budget, *([f"budget.seeds={self.seeds}"] if self.seeds is not None else [])]

    def command_text(self) -> str:
        """``--set a=1 b=2 --trials 3``: the flags these settings stand for ('' for none)."""
        parts = [f"--set {' '.join(self.overrides)}"] if self.overrides else []
        parts += [f"--trials {self.trials}"] if self.trials is not None else []
        parts += [f"--seeds {self.seeds}"] if self.seeds is not None else []
        return " ".join(parts)

    def to_attr(self) -> dict[str, Any]:
        """The JSON form stored in the study."""
        return {"set": list(self.overrides), "trials": self.trials, "seeds": self.seeds}


def stored_settings(study: optuna.Study | None) -> RunSettings:
    """The settings `study` was last run with (none for a study made before they were stored)."""
    attr = study.user_attrs.get(SETTINGS) if study is not None else None
    if not isinstance(attr, dict):
        return RunSettings()
    return RunSettings(tuple(attr.get("set") or ()), attr.get("trials"), attr.get("seeds"))


def store_settings(study: optuna.Study, settings: RunSettings, config: StudyConfig) -> None:
    """Record `settings` and the study config they resolve to in `study`."""
    study.set_user_attr(SETTINGS, settings.to_attr())
    study.set_user_attr(CONFIG, json.loads(json.dumps(to_dict(config))))


def with_stored_settings(config: StudyConfig, study: optuna.Study) -> StudyConfig:
    """`config` (a study file as loaded) with the settings stored in `study` applied: what `run` works to."""
    overrides = stored_settings(study).override_list()
    return with_overrides(config, overrides, label="stored --set") if overrides else config


def check_continues(study: optuna.Study, name: str | Path, config: StudyConfig, given: RunSettings,
                    extra: list[str], where: str, fresh: str) -> None:
    """ConfigError unless `config` (study file `name` with the stored settings, `given` and the `extra`
    overrides) is the study `study` was made from: every differing key, and how to go on. `where` names
    the storage as the user gave it (``--runs runs``), `fresh` how to give another one."""
    differences = identity_differences(study, config)
    if not differences:
        return
    stored = stored_settings(study)
    _, alone = load_study_config(name, stored.override_list() + extra)
    if (given.overrides or given.seeds) and not identity_differences(study, alone):
        kept = stored.command_text()
        how = f"run it without --set{' and --seeds' if given.seeds else ''} to continue it" + \
              (f" (it keeps its stored {kept})" if kept else "")
    else:
        how = "run it with the study file it was made from to continue it"
    raise ConfigError(f"{where}: study {study.study_name!r} there was made with other settings "
                      f"({'; '.join(differences)}); {how}, or start a fresh study with {fresh}")
