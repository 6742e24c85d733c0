"""Optuna studies over architectures: study files, the search space, workers and trial processes.

`load_study_config(name)` reads and checks ``studies/<name>.yaml``; `suggest_spec(trial, space,
base)` turns a trial into a `BackboneSpec`; `run_study(name, config)` works on the study until its
budget is spent (several workers may share one storage); each trial trains in its own process
(`python -m xvol_lab.study.trial`).
"""

from xvol_lab.lazy import lazy_exports

# Imported on first use (`xvol_lab.lazy`): reading a study file (`xvol_lab.study.config`) needs neither
# Lightning nor the workers.
_EXPORTS = {
    "config": ["StudyConfig", "load_study_config"],
    "ledger": ["Tally", "tally"],
    "space": ["expand_space", "suggest_spec"],
    "storage": ["default_storage_url", "open_storage"],
    "worker": ["Worker", "run_study"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
