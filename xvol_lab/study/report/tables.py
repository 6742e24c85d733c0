"""The report's tables, each a pandas DataFrame built from a `StudyData`.

Numbers stay numbers (NaN where unknown); notes for the reader (why a table is empty, what was
left out) are in ``df.attrs["note"]``. Only counted trials (`xvol_lab.study.ledger.counted`) that
completed enter the ablation, per-stage, importance and Pareto tables.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from xvol_lab.models import BackboneSpec
from xvol_lab.ops import OPS
from xvol_lab.study.config import FLOPS_G, LATENCY_BATCH_MS, LATENCY_MS, PARAMS_M, STAGES
from xvol_lab.study.report.source import (
    StudyData,
    arch_key,
    changed_stages,
    configuration_label,
    effective_stage,
    is_all_conv,
    number_attr,
    user_metrics,
    wall_seconds,
)

PARAMS = "params (M)"
FLOPS = "FLOPs (G)"
LATENCY = "latency b1 (ms)"
EPOCHS = "epochs"
BEST_EPOCH = "best epoch"
WALL = "wall time (s)"
STAGE_COLUMNS = tuple(f"stage{i}" for i in STAGES)
DELTA = "Δ"  # the difference to the all-conv baseline
# Objectives the study measures, by the column that shows them.
MEASURED_COLUMNS = {PARAMS_M: PARAMS, LATENCY_MS: LATENCY, FLOPS_G: FLOPS}


def objective_column(metric: str) -> str:
    """The column of objective `metric`: the metric name, or the cost column of a measured one."""
    return MEASURED_COLUMNS.get(metric, metric)


def latency_batch_column(data: StudyData) -> str:
    """``latency b64 (ms)``: latency at the study's batch size."""
    return f"latency b{data.config.base.data.batch_size} (ms)"


def _stage_cells(data: StudyData, trial: FrozenTrial) -> dict[str, str]:
    spec = data.spec(trial)
    texts = [effective_stage(s).describe() for s in spec.stages] if spec is not None else [""] * len(STAGES)
    return dict(zip(STAGE_COLUMNS, texts, strict=True))


def trials_table(data: StudyData) -> pd.DataFrame:
    """Every trial: number, state and reason, the operator of each stage, the objectives and logged
    metrics, params, FLOPs, latency (batch 1 and the study's batch), epochs and wall time."""
    logged = [m for m in data.metric_names if m not in MEASURED_COLUMNS]
    logged += [m for m in user_metrics(data.trials) if m not in logged]
    cost = [PARAMS, FLOPS, LATENCY, latency_batch_column(data)]
    columns = ["number", "state", "reason", *STAGE_COLUMNS, *logged, *cost, EPOCHS, BEST_EPOCH, WALL]
    rows = []
    for trial in data.trials:
        state, reason = data.state(trial)
        row: dict[str, object] = {"number": trial.number, "state": state, "reason": reason,
                                  **_stage_cells(data, trial)}
        row.update({m: number_attr(trial, m) for m in logged})
        measured = (number_attr(trial, PARAMS_M), data.flops_g(trial), number_attr(trial, LATENCY_MS),
                    number_attr(trial, LATENCY_BATCH_MS))
        row.update(dict(zip(cost, measured, strict=True)))
        for metric, value in zip(data.metric_names, data.objective_values(trial), strict=True):
            if not math.isnan(value):
                row[objective_column(metric)] = value
        row.update({EPOCHS: number_attr(trial, "epochs"), BEST_EPOCH: number_attr(trial, "best_epoch"),
                    WALL: wall_seconds(trial)})
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _configurations(data: StudyData) -> dict[BackboneSpec, list[FrozenTrial]]:
    """Complete counted trials grouped by network (`arch_key`), in order of first appearance."""
    groups: dict[BackboneSpec, list[FrozenTrial]] = {}
    for trial in data.complete:
        spec = data.spec(trial)
        if spec is not None:
            groups.setdefault(arch_key(spec), []).append(trial)
    return groups


def _baseline(keys: list[BackboneSpec]) -> BackboneSpec | None:
    """The all-conv configuration (plain 3x3 convolutions preferred)."""
    convs = [k for k in keys if is_all_conv(k)]
    plain = [k for k in convs if not changed_stages(k)]
    return (plain or convs or [None])[0]


def ablation_table(data: StudyData) -> pd.DataFrame:
    """The paper's ablation: one row per configuration (distinct network), the objectives' mean over
    its trials (seeds), their standard deviation (n > 1), the difference of the mean to the
    all-conv baseline (Δ), params and FLOPs. The baseline comes first."""
    groups = _configurations(data)
    labels = [objective_column(m) for m in data.metric_names]
    extra = [c for c in (PARAMS, FLOPS) if c not in labels]
    columns = ["configuration", "n", "trials"]
    for label in labels:
        columns += [label, f"{label} std", f"{DELTA} {label}"]
    columns += extra
    baseline = _baseline(list(groups))
    means = {key: [statistics.fmean(t.values[i] for t in trials) for i in range(len(labels))]
             for key, trials in groups.items()}
    order = sorted(groups, key=lambda k: (k != baseline, len(changed_stages(k)), changed_stages(k),
                                          configuration_label(k)))
    rows = []
    for key in order:
        trials = groups[key]
        row: dict[str, object] = {"configuration": configuration_label(key), "n": len(trials),
                                  "trials": ", ".join(str(t.number) for t in trials)}
        for i, label in enumerate(labels):
            values = [t.values[i] for t in trials]
            row[label] = means[key][i]
            row[f"{label} std"] = statistics.stdev(values) if len(values) > 1 else math.nan
            row[f"{DELTA} {label}"] = means[key][i] - means[baseline][i] if baseline is not None else math.nan
        if PARAMS in extra:
            row[PARAMS] = _nanmean([number_attr(t, PARAMS_M) for t in trials])
        if FLOPS in extra:
            row[FLOPS] = data.flops_g(trials[0])
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    if not groups:
        table.attrs["note"] = _no_rows(data)
    elif baseline is None:
        table.attrs["note"] = f"no all-conv trial: the {DELTA} columns are empty"
    return table


def _no_rows(data: StudyData) -> str:
    if not data.complete:
        return "no complete trial yet"
    return "no complete trial has params that are a point of the study file's space"


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def _best(direction: str) -> Callable[[list[float]], float]:
    return max if direction == "maximize" else min


def stage_effects_table(data: StudyData) -> pd.DataFrame:
    """For each searched stage and each operator it took: the number of complete trials, the mean
    and the best of each objective."""
    labels = [objective_column(m) for m in data.metric_names]
    columns = ["stage", "op", "n"] + [f"{label} {kind}" for label in labels for kind in ("mean", "best")]
    rows = []
    for stage in data.config.space.stage_choices():
        by_op: dict[str, list[FrozenTrial]] = {}
        for trial in data.complete:
            spec = data.spec(trial)
            if spec is not None:
                by_op.setdefault(spec.stages[stage - 1].op, []).append(trial)
        for op in sorted(by_op, key=list(OPS).index):
            trials = by_op[op]
            row: dict[str, object] = {"stage": stage, "op": op, "n": len(trials)}
            for i, (label, direction) in enumerate(zip(labels, data.directions, strict=True)):
                values = [t.values[i] for t in trials]
                row[f"{label} mean"] = statistics.fmean(values)
                row[f"{label} best"] = _best(direction)(values)
            rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    if not rows:
        table.attrs["note"] = _no_rows(data)
    return table


def _importances(data: StudyData, index: int) -> tuple[dict[str, float], list[str]]:
    """Optuna's parameter importances for objective `index` over the complete counted trials, and
    the evaluator's warnings; ``{}`` when it cannot tell the parameters apart."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction=data.directions[index])
    finally:
        optuna.logging.set_verbosity(verbosity)
    for trial in data.complete:
        study.add_trial(optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                                  values=[trial.values[index]]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = optuna.importance.get_param_importances(study)
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    if any("will be equal" in m for m in messages) or not any(v > 0 for v in result.values()):
        return {}, messages
    return dict(result), messages


def importance_table(data: StudyData) -> pd.DataFrame:
    """Parameter importances (`optuna.importance.get_param_importances`, normalised to sum 1), one
    column per objective, most important first. Too few trials give an empty table and a note."""
    labels = [objective_column(m) for m in data.metric_names]
    table = pd.DataFrame(columns=["parameter", *labels])
    n = len(data.complete)
    if n < 2:
        table.attrs["note"] = f"parameter importances need at least 2 complete trials; the study has {n}"
        return table
    if not any(t.params for t in data.complete):
        table.attrs["note"] = "the search space has no parameter with more than one choice"
        return table
    columns: dict[str, dict[str, float]] = {}
    notes = []
    for i, label in enumerate(labels):
        values, messages = _importances(data, i)
        if values:
            columns[label] = values
        else:
            notes.append(f"{label}: too few or too similar complete trials ({n}) to tell the "
                         "parameters apart")
        notes += [f"{label}: {m}" for m in messages if "will be equal" not in m]
    if columns:
        params = list(dict.fromkeys(p for values in columns.values() for p in values))
        table = pd.DataFrame([{"parameter": p, **{label: columns.get(label, {}).get(p, math.nan)
                                                  for label in labels}} for p in params],
                             columns=["parameter", *labels])
        table = table.sort_values(labels[0], ascending=False, kind="stable").reset_index(drop=True)
    if notes:
        table.attrs["note"] = "; ".join(note.rstrip(".") for note in notes)
    return table


def pareto_table(data: StudyData) -> pd.DataFrame:
    """The best trials (`study.best_trials`): the Pareto front with several objectives, the best
    trial(s) with one; rows of `trials_table` without state and reason, best first objective first."""
    counted = {t.number for t in data.complete}
    front = sorted(t.number for t in data.study.best_trials if t.number in counted)
    table = trials_table(data)
    table = table[table["number"].isin(front)].drop(columns=["state", "reason"])
    label = objective_column(data.metric_names[0])
    table = table.sort_values([label, "number"], ascending=[data.directions[0] == "minimize", True],
                              kind="stable").reset_index(drop=True)
    if table.empty:
        table.attrs["note"] = "no complete trial yet"
    return table
