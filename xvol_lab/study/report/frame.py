"""A study's results as the analyses read them, built once from a `StudyData`:

- `seed_frame`: one long DataFrame with a row per counted complete trial and seed (the trial's user
  attrs ``seeds`` and ``per_seed``; a trial without them is one run with the study's base.seed and
  its stored values): trial, configuration (whether it is all-conv, which stages it changes), its
  control role ('' for the others; a control's configuration is its row name, ``positive control:
  <name>``), the operator of each stage, seed, the seed it pairs with (the baseline's: the negative
  control's seeds shifted back to the baseline's), every objective and cost metric, and the
  latency's device;
- `counted_study`: an in-memory Optuna study holding the stored trials under their own numbers,
  the counted complete and pruned ones as they are and every other one as FAIL, for Optuna's
  importances and plots.
"""

from __future__ import annotations

import math

import optuna
import pandas as pd
from optuna.trial import TrialState, create_trial

from xvol_lab.study.config import FLOPS_G, PARAMS_M
from xvol_lab.study.controls import NEGATIVE, NEGATIVE_SEED_OFFSET
from xvol_lab.study.ledger import counted
from xvol_lab.study.report.columns import (
    ALL_CONV,
    CHANGED,
    CONFIGURATION,
    COSTS,
    DEVICE,
    DEVICE_ATTR,
    PAIR,
    ROLE,
    SEED,
    STAGE_OPS,
    TRIAL,
)
from xvol_lab.study.report.source import (
    StudyData,
    changed_stages,
    configuration_label,
    control_role,
    is_all_conv,
    number_attr,
)
from xvol_lab.study.standing import in_memory_study


def metric_columns(data: StudyData) -> list[str]:
    """The frame's metric columns: the objectives, then the cost metrics that are not objectives."""
    return [*data.metric_names, *(m for m in COSTS if m not in data.metric_names)]


def _float(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _trial_value(data: StudyData, trial: optuna.trial.FrozenTrial, metric: str) -> float:
    """The trial-level value of `metric`: its stored objective value, else its attr (FLOPs: counted)."""
    if metric in data.metric_names:
        return float(trial.values[data.metric_names.index(metric)])
    return data.flops_g(trial) if metric == FLOPS_G else number_attr(trial, metric)


def seed_frame(data: StudyData) -> pd.DataFrame:
    """One row per (counted complete trial, seed) whose params are a point of the space (module doc).

    A metric missing from ``per_seed`` takes the trial's value when the trial ran one seed; with
    several seeds, the costs that do not depend on the seed (params, FLOPs) take the trial's value
    and the others stay NaN."""
    metrics = metric_columns(data)
    columns = [TRIAL, CONFIGURATION, ALL_CONV, CHANGED, ROLE, *STAGE_OPS, SEED, PAIR, *metrics, DEVICE]
    rows = []
    controls = data.config.controls
    for trial in data.complete:
        spec = data.spec(trial)
        if spec is None:
            continue
        role = control_role(trial)
        seeds = trial.user_attrs.get("seeds") or [data.config.base.seed]
        per_seed = trial.user_attrs.get("per_seed") or {}
        base = {TRIAL: trial.number,
                CONFIGURATION: controls.label(role) if role else configuration_label(spec),
                ALL_CONV: is_all_conv(spec) and not role, CHANGED: changed_stages(spec), ROLE: role,
                **{col: stage.op for col, stage in zip(STAGE_OPS, spec.stages, strict=True)},
                DEVICE: str(trial.user_attrs.get(DEVICE_ATTR) or "")}
        shift = NEGATIVE_SEED_OFFSET if role == NEGATIVE else 0
        for i, seed in enumerate(seeds):
            row = {**base, SEED: int(seed), PAIR: int(seed) - shift}
            for metric in metrics:
                if metric in per_seed:
                    row[metric] = _float(per_seed[metric][i])
                elif len(seeds) == 1 or metric in (PARAMS_M, FLOPS_G):
                    row[metric] = _trial_value(data, trial, metric)
                else:
                    row[metric] = math.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def latency_devices(frame: pd.DataFrame) -> list[str]:
    """The distinct named devices latencies were measured on, in order of appearance."""
    return [d for d in dict.fromkeys(frame[DEVICE]) if d]


def counted_study(data: StudyData) -> optuna.Study:
    """The stored trials in an in-memory study under the same numbers: counted complete and pruned
    trials with their params, values and per-epoch values; every other trial (controls included) as
    an empty FAIL."""
    study = in_memory_study(data.directions)
    complete = {t.number for t in data.complete if not control_role(t)}  # controls are no point of the space
    pruned = {t.number for t in counted(data.trials) if t.state == TrialState.PRUNED}
    trials = []
    for t in data.trials:
        if t.number in complete | pruned:
            trials.append(create_trial(state=t.state, params=t.params, distributions=t.distributions,
                                       values=t.values if t.number in complete else None,
                                       intermediate_values=t.intermediate_values))
        else:
            trials.append(create_trial(state=TrialState.FAIL))
    study.add_trials(trials)
    return study
