"""Optuna studies over architectures: study files, the search space, workers and trial processes.

`load_study_config(name)` reads and checks ``studies/<name>.yaml``; `suggest_spec(trial, space,
base)` turns a trial into a `BackboneSpec`; `run_study(name, config)` works on the study until its
budget is spent (several workers may share one storage); each trial trains in its own process
(`python -m xvol_lab.study.trial`).
"""

from xvol_lab.study.config import StudyConfig, load_study_config
from xvol_lab.study.ledger import Tally, tally
from xvol_lab.study.space import expand_space, suggest_spec
from xvol_lab.study.storage import default_storage_url, open_storage
from xvol_lab.study.worker import Worker, run_study

__all__ = ["StudyConfig", "Tally", "Worker", "default_storage_url", "expand_space", "load_study_config",
           "open_storage", "run_study", "suggest_spec", "tally"]
