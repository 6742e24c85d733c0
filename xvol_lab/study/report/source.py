"""A study read back from its storage, for reports and export: every trial with its state, reason,
architecture (`spec_of` the trial's params) and cost.

`load_study_data(name)` opens the study's storage read-only; it works while workers still run
and on partly failed studies. Which trials count follows `xvol_lab.study.ledger`: interrupted
trials (retried under a new number) and void trials are listed but never analysed.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from xvol_lab.errors import ConfigError
from xvol_lab.models import BackboneSpec, StageSpec, build_classifier
from xvol_lab.models.cost import count_flops
from xvol_lab.study.config import FLOPS_G, StudyConfig, load_study_config
from xvol_lab.study.controls import CONTROL_ATTR
from xvol_lab.study.ledger import Tally, counted, tally
from xvol_lab.study.settings import stored_settings
from xvol_lab.study.space import spec_of
from xvol_lab.study.standing import complete_trials, retried_as, state_and_reason
from xvol_lab.study.storage import default_storage_url, find_study, open_storage, shown_url, sqlite_file
from xvol_lab.tasks.registry import task_record

# The operators by their names in the paper.
DISPLAY = {"conv": "conv", "sa": "SA", "pssa": "PSSA", "xvol_sa": "X-volution(SA)",
           "xvol_pssa": "X-volution(PSSA)"}


def effective_stage(stage: StageSpec) -> StageSpec:
    """`stage` with the options its operator ignores reset, so equal networks compare equal."""
    return StageSpec(op=stage.op, **stage.op_kwargs())


def arch_key(spec: BackboneSpec) -> BackboneSpec:
    """`spec` with every stage reduced to `effective_stage`: one key per distinct network."""
    return dataclasses.replace(spec, stages=tuple(effective_stage(s) for s in spec.stages))


def stage_label(stage: StageSpec) -> str:
    """The paper's name with the non-default options: ``X-volution(PSSA, L=2)``, ``PSSA(L=3)``, ``conv``."""
    text = effective_stage(stage).describe()  # 'xvol_pssa(L=2)'
    options = text[len(stage.op) + 1:-1] if "(" in text else ""
    name = DISPLAY.get(stage.op, stage.op)
    if not options:
        return name
    return f"{name[:-1]}, {options})" if name.endswith(")") else f"{name}({options})"


def is_all_conv(spec: BackboneSpec) -> bool:
    """Every stage is a convolution (of any kernel size)."""
    return all(s.op == "conv" for s in spec.stages)


def changed_stages(spec: BackboneSpec) -> tuple[int, ...]:
    """The stages (1-4) that are not a plain 3x3 convolution."""
    return tuple(i for i, stage in enumerate(spec.stages, start=1) if effective_stage(stage) != StageSpec())


def configuration_label(spec: BackboneSpec) -> str:
    """``conv everywhere``, ``X-volution(PSSA) in stage 3``, ``PSSA in stages 1, 2; SA in stage 4``."""
    groups: dict[str, list[int]] = {}
    for i in changed_stages(spec):
        groups.setdefault(stage_label(spec.stages[i - 1]), []).append(i)
    if not groups:
        return "conv everywhere"
    return "; ".join(f"{label} in stage{'s' if len(where) > 1 else ''} {', '.join(map(str, where))}"
                     for label, where in groups.items())


def control_role(trial: FrozenTrial) -> str:
    """'positive' / 'negative' for a control's trial, '' for the others."""
    role = trial.user_attrs.get(CONTROL_ATTR)
    return role if isinstance(role, str) else ""


def wall_seconds(trial: FrozenTrial) -> float:
    """datetime_complete - datetime_start in seconds; NaN while the trial runs or waits."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return math.nan
    return (trial.datetime_complete - trial.datetime_start) / datetime.timedelta(seconds=1)


def number_attr(trial: FrozenTrial, key: str) -> float:
    """User attr `key` as a float; NaN when absent or not a number."""
    value = trial.user_attrs.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


class StudyData:
    """Study `name` as stored: its config, Optuna study and trials, with per-trial helpers."""

    def __init__(self, name: str, config: StudyConfig, study: optuna.Study, url: str) -> None:
        self.name, self.config, self.study, self.url = name, config, study, url
        self.trials: list[FrozenTrial] = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        self.counted: list[FrozenTrial] = counted(self.trials)
        self.complete: list[FrozenTrial] = complete_trials(self.trials)
        self.retried = retried_as(self.trials)  # interrupted trial number -> the number of its retry
        self.tally: Tally = tally(self.trials)
        self._specs: dict[int, BackboneSpec | None] = {}
        self.bad_params: dict[int, str] = {}
        self._flops: dict[BackboneSpec, float] = {}

    @property
    def metric_names(self) -> list[str]:
        """The objectives' metric names, in order."""
        return self.config.metric_names

    @property
    def directions(self) -> list[str]:
        """'maximize' / 'minimize' per objective."""
        return self.config.directions

    @property
    def shown_url(self) -> str:
        """The storage URL without its password."""
        return shown_url(self.url)

    def spec(self, trial: FrozenTrial) -> BackboneSpec | None:
        """The trial's architecture (a control's: from the study file's `controls`); None while it has
        no complete point of the space (waiting, or params that do not fit the study file any more;
        see `bad_params`)."""
        if trial.number not in self._specs:
            role = control_role(trial)
            if role in self.config.controls.roles and self.config.baseline_spec is not None:
                self._specs[trial.number] = self.config.controls.spec(role, self.config.baseline_spec)
                return self._specs[trial.number]
            try:
                self._specs[trial.number] = spec_of(self.config.space, self.config.base.model, trial.params)
            except ValueError as err:
                self._specs[trial.number] = None
                if trial.state != TrialState.WAITING and trial.params:
                    self.bad_params[trial.number] = str(err)
        return self._specs[trial.number]

    def state(self, trial: FrozenTrial) -> tuple[str, str]:
        """(state, reason) as `xvol_lab.study.standing.state_and_reason` words them."""
        return state_and_reason(trial, self.retried)

    def objective_values(self, trial: FrozenTrial) -> list[float]:
        """The objective values: stored for a complete trial, else the logged metrics (NaN if none)."""
        if trial.state == TrialState.COMPLETE and trial.values is not None:
            return [float(v) for v in trial.values]
        return [number_attr(trial, m) for m in self.metric_names]

    def flops_g(self, trial: FrozenTrial) -> float:
        """GFLOPs (2 per multiply-add) of one image through the deploy form: the stored measurement,
        else counted on the deploy classifier of the spec (classification studies; NaN for other tasks)."""
        stored = number_attr(trial, FLOPS_G)
        if not math.isnan(stored):
            return stored
        spec = self.spec(trial)
        if spec is None or task_record(self.config.task).output != "labels":
            return math.nan
        key = arch_key(spec)
        if key not in self._flops:
            data = self.config.base.data
            model = build_classifier(key, data.num_classes, deploy=True)
            self._flops[key] = count_flops(model, (1, key.in_chans, data.image_size, data.image_size)) / 1e9
        return self._flops[key]


def load_study_data(name: str | Path, *, runs: Path = Path("runs"), storage_url: str | None = None,
                    overrides: Sequence[str] = ()) -> StudyData:
    """Study NAME (a study file) from its storage (default ``<runs>/<name>/study.db``).

    ConfigError: unknown study file, no storage, study not in the storage, objectives that differ
    from the study file, or no finished trial yet.
    """
    study_name, config = load_study_config(name, list(overrides))
    url = storage_url or default_storage_url(runs, study_name)
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise ConfigError(f"study {study_name}: no storage at {path} (run `lab.py study run {name}` first)")
    study = find_study(open_storage(url, create=False), study_name)
    if study is None:
        raise ConfigError(f"study {study_name}: not in {shown_url(url)} "
                          f"(run `lab.py study run {name}` first)")
    # the settings `study run` stored (its --set, --trials, --seeds), then `overrides`: the budget it works to
    _, config = load_study_config(name, stored_settings(study).override_list() + list(overrides))
    stored = [d.name.lower() for d in study.directions]
    if stored != config.directions:
        raise ConfigError(f"study {study_name}: the storage has directions {stored}, the study file "
                          f"{config.directions} ({', '.join(config.metric_names)}); expected the same "
                          "objectives")
    data = StudyData(study_name, config, study, url)
    if not data.counted:
        raise ConfigError(f"study {study_name}: no finished trial yet in {shown_url(url)} "
                          f"({data.tally.running} running, {data.tally.waiting} queued)")
    return data


def user_metrics(trials: Sequence[FrozenTrial]) -> list[str]:
    """Names of the logged metrics (``val/acc1``, ``train/loss``) in the trials' user attrs: val first."""
    names = {k for t in trials for k, v in t.user_attrs.items()
             if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(names, key=lambda k: (not k.startswith("val/"), k))
