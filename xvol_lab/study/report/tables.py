"""The report's tables, each a pandas DataFrame built from a `StudyData`.

Numbers stay numbers (NaN where unknown); notes for the reader (why a table is empty, what was
left out) are in ``df.attrs["note"]``. Only counted trials (`xvol_lab.study.ledger.counted`) that
completed enter the ablation, per-stage, importance and Pareto tables; the ablation and per-stage
tables group the runs of `xvol_lab.study.report.frame.seed_frame` (one per trial and seed).

FLOPs follow torch's counter: a multiply-add is 2 FLOPs, so ``GFLOPs (2×MAC)`` is twice ``GMACs``
(the unit of torchvision's and most papers' ResNet figures: ResNet-50 at 224 px is 4.089 GMACs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from xvol_lab.ops import OPS
from xvol_lab.study import stats
from xvol_lab.study.config import FLOPS_G, LATENCY_BATCH_MS, LATENCY_MS, PARAMS_M
from xvol_lab.study.report.frame import (
    ALL_CONV,
    CHANGED,
    CONFIGURATION,
    DEVICE,
    DEVICE_ATTR,
    LATENCIES,
    SEED,
    TRIAL,
    counted_study,
    latency_devices,
    seed_frame,
)
from xvol_lab.study.report.source import StudyData, effective_stage, number_attr, user_metrics, wall_seconds
from xvol_lab.study.space_config import STAGES
from xvol_lab.study.standing import best_trials

PARAMS = "params (M)"
FLOPS = "GFLOPs (2×MAC)"
GMACS = "GMACs"
LATENCY = "latency b1 (ms)"
EPOCHS = "epochs"
BEST_EPOCH = "best epoch"
WALL = "wall time (s)"
STAGE_COLUMNS = tuple(f"stage{i}" for i in STAGES)
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
    metrics (a trial's mean over its seeds), params, FLOPs, latency (batch 1 and the study's batch),
    GMACs, the latency's device (when recorded), epochs and wall time."""
    logged = [m for m in data.metric_names if m not in MEASURED_COLUMNS]
    logged += [m for m in user_metrics(data.trials) if m not in logged]
    cost = [PARAMS, FLOPS, LATENCY, latency_batch_column(data)]
    device = [DEVICE] if any(t.user_attrs.get(DEVICE_ATTR) for t in data.trials) else []
    columns = ["number", "state", "reason", *STAGE_COLUMNS, *logged, *cost, GMACS, *device,
               EPOCHS, BEST_EPOCH, WALL]
    rows = []
    for trial in data.trials:
        state, reason = data.state(trial)
        row: dict[str, object] = {"number": trial.number, "state": state, "reason": reason,
                                  **_stage_cells(data, trial)}
        row.update({m: number_attr(trial, m) for m in logged})
        measured = (number_attr(trial, PARAMS_M), data.flops_g(trial), number_attr(trial, LATENCY_MS),
                    number_attr(trial, LATENCY_BATCH_MS))
        row.update(dict(zip(cost, measured, strict=True)))
        if device:
            row[DEVICE] = str(trial.user_attrs.get(DEVICE_ATTR) or "")
        for metric, value in zip(data.metric_names, data.objective_values(trial), strict=True):
            if not math.isnan(value):
                row[objective_column(metric)] = value
        row[GMACS] = row[FLOPS] / 2
        row.update({EPOCHS: number_attr(trial, "epochs"), BEST_EPOCH: number_attr(trial, "best_epoch"),
                    WALL: wall_seconds(trial)})
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _order_key(frame: pd.DataFrame, baseline: str | None) -> Callable[[str], tuple]:
    """Rows in the order of the paper's tables: the baseline, then by the stages a configuration changes."""
    changed = dict(zip(frame[CONFIGURATION], frame[CHANGED], strict=True))
    return lambda label: (label != baseline, len(changed[label]), changed[label], label)


def baseline_configuration(frame: pd.DataFrame) -> str | None:
    """The all-conv configuration of `frame` (plain 3x3 convolutions preferred), None without one."""
    convs = frame[frame[ALL_CONV]]
    plain = convs[convs[CHANGED].map(len) == 0]
    for candidates in (plain, convs):
        if not candidates.empty:
            return str(candidates[CONFIGURATION].iloc[0])
    return None


STAT_KINDS = ("mean", "std", "n", "ci95_low", "ci95_high", "diff", "diff_ci95_low", "diff_ci95_high", "p",
              "p_exact", "p_holm", "sig")


def stat_columns(label: str) -> list[str]:
    """The ablation table's columns for one objective (see `ablation_table`)."""
    return [f"{label} {kind}" for kind in STAT_KINDS]


def _split_by_device(data: StudyData, frame: pd.DataFrame) -> bool:
    """Latency is an objective and was measured on several devices: keep the devices apart."""
    return len(latency_devices(frame)) > 1 and any(m in LATENCIES for m in data.metric_names)


def ablation_table(data: StudyData) -> pd.DataFrame:
    """The paper's ablation: one row per configuration (distinct network), the baseline (all-conv)
    first, over its runs (counted complete trials x seeds, see `seed_frame`). For each objective:
    mean, std (ddof=1), n and the 95% t interval of the mean; the difference to the baseline paired
    by seed (runs of one configuration with the same seed averaged first) with its 95% t interval,
    the paired t-test p, the exact sign-flip p, the Holm-corrected t-test p across the rows and
    ``*`` when that is below 0.05 (`xvol_lab.study.stats`). Then params, GFLOPs (2 x MAC) and GMACs.

    Latencies measured on different devices are not mixed: with a latency objective and several
    devices, rows are per configuration and device, each paired with the baseline on its device."""
    frame = seed_frame(data)
    labels = [objective_column(m) for m in data.metric_names]
    split = _split_by_device(data, frame)
    keys = [CONFIGURATION, DEVICE] if split else [CONFIGURATION]
    costs = [c for c in (PARAMS, FLOPS) if c not in labels] + [GMACS]
    columns = [*keys, "n", "seeds", "trials"] + [c for label in labels for c in stat_columns(label)] + costs
    if frame.empty:
        table = pd.DataFrame(columns=columns)
        table.attrs["note"] = _no_rows(data)
        return table
    baseline = baseline_configuration(frame)
    grouped = frame.groupby(keys, sort=False)
    table = grouped.agg(n=(SEED, "size"), seeds=(SEED, lambda s: ", ".join(map(str, sorted(set(s))))),
                        trials=(TRIAL, lambda s: ", ".join(map(str, dict.fromkeys(s)))),
                        params=(PARAMS_M, "mean"), flops=(FLOPS_G, "mean")).reset_index()
    moments = grouped[data.metric_names].agg(["mean", "std", "count"])
    by_seed = frame.groupby([*keys, SEED])[data.metric_names].mean()
    for metric, label in zip(data.metric_names, labels, strict=True):
        _add_interval(table, label, moments[metric], with_n=True)
        diffs = [_paired_to_baseline(by_seed[metric], key, baseline)
                 for key in table[keys].itertuples(index=False, name=None)]
        for kind, values in zip(("diff", "diff_ci95_low", "diff_ci95_high", "p", "p_exact"),
                                zip(*diffs, strict=True), strict=True):
            table[f"{label} {kind}"] = list(values)
        table[f"{label} p_holm"] = stats.holm(table[f"{label} p"].tolist())
        table[f"{label} sig"] = ["*" if stats.significant(p) else "" for p in table[f"{label} p_holm"]]
    table[PARAMS] = table.pop("params")
    flops = table.pop("flops")
    if FLOPS in costs:
        table[FLOPS] = flops
    table[GMACS] = flops / 2
    order = _order_key(frame, baseline)
    table = table.sort_values(keys, key=lambda col: col.map(order) if col.name == CONFIGURATION else col,
                              kind="stable").reset_index(drop=True)
    table = table[columns]
    if baseline is not None:
        table.attrs["baseline"] = baseline
    notes = []
    if baseline is None:
        notes.append("no all-conv trial: the difference columns are empty")
    if split:
        notes.append(f"latency measured on {len(latency_devices(frame))} devices "
                     f"({', '.join(latency_devices(frame))}): one row per configuration and device")
    if notes:
        table.attrs["note"] = "; ".join(notes)
    return table


def _add_interval(table: pd.DataFrame, label: str, moments: pd.DataFrame, *, with_n: bool) -> None:
    """Columns ``<label> mean, std[, n], ci95_low, ci95_high`` from groupby moments (mean, std, count)."""
    mean, std, n = (moments[k].to_numpy() for k in ("mean", "std", "count"))
    half = [stats.t_halfwidth(sd, int(k)) for sd, k in zip(std, n, strict=True)]
    table[f"{label} mean"], table[f"{label} std"] = mean, std
    if with_n:
        table[f"{label} n"] = n
    table[f"{label} ci95_low"], table[f"{label} ci95_high"] = mean - half, mean + half


def _paired_to_baseline(values: pd.Series, key: tuple,
                        baseline: str | None) -> tuple[float, float, float, float, float]:
    """(diff, low, high, p, p_exact) of group `key` (configuration[, device]) against the baseline
    on the same device; the baseline itself gets a difference of 0 and no test; NaN without one."""
    if baseline is None:
        return (math.nan,) * 5
    base_key = (baseline, *key[1:])
    if key == base_key:
        return 0.0, math.nan, math.nan, math.nan, math.nan
    x = _seed_values(values, key)
    y = _seed_values(values, base_key)
    if not y:
        return (math.nan,) * 5
    result = stats.paired(x, y)
    return result.diff, result.ci95_low, result.ci95_high, result.p, result.p_exact


def _seed_values(values: pd.Series, key: tuple) -> dict[int, float]:
    """seed -> value of group `key` in `values` (indexed by the group keys and the seed)."""
    return {int(index[-1]): float(v) for index, v in values.items() if tuple(index[:-1]) == key}


def _no_rows(data: StudyData) -> str:
    if not data.complete:
        return "no complete trial yet"
    return "no complete trial has params that are a point of the study file's space"


def stage_effects_table(data: StudyData) -> pd.DataFrame:
    """For each searched stage and each operator it took: the runs (trials x seeds) of every
    configuration with that operator there, and per objective their mean, std, 95% t interval of
    the mean and the best run (latencies of several devices kept apart, as in `ablation_table`)."""
    frame = seed_frame(data)
    labels = [objective_column(m) for m in data.metric_names]
    split = _split_by_device(data, frame)
    keys = ["stage", "op", *([DEVICE] if split else [])]
    columns = [*keys, "n"] + [f"{label} {kind}" for label in labels
                              for kind in ("mean", "std", "ci95_low", "ci95_high", "best")]
    stages = list(data.config.space.stage_choices())
    if frame.empty or not stages:
        table = pd.DataFrame(columns=columns)
        table.attrs["note"] = _no_rows(data)
        return table
    long = pd.concat([frame.assign(stage=s, op=frame[f"stage{s} op"]) for s in stages], ignore_index=True)
    grouped = long.groupby(keys, sort=False)
    table = grouped.agg(n=(SEED, "size")).reset_index()
    for metric, label, direction in zip(data.metric_names, labels, data.directions, strict=True):
        moments = grouped[metric].agg(["mean", "std", "count", "max", "min"])
        _add_interval(table, label, moments, with_n=False)
        table[f"{label} best"] = moments["max" if direction == "maximize" else "min"].to_numpy()
    op_order = list(OPS)
    table = table.sort_values(["stage", "op"], kind="stable",
                              key=lambda col: col.map(op_order.index) if col.name == "op" else col)
    table = table.reset_index(drop=True)
    return table[columns]


# Optuna's default evaluator (PED-ANOVA) reminds that it reads a target as lower-is-better;
# `importance_target` signs it so.
LOWER_IS_BETTER = r".*low `target` values"


def importance_target(directions: list[str], index: int) -> Callable[[FrozenTrial], float] | None:
    """How Optuna's importances read objective `index`: None with one objective (the evaluator follows
    the study's direction), else the value signed so that lower is better."""
    if len(directions) == 1:
        return None
    sign = -1.0 if directions[index] == "maximize" else 1.0
    return lambda t: sign * t.values[index]


def _importances(study: optuna.Study, index: int) -> tuple[dict[str, float], list[str]]:
    """Optuna's parameter importances for objective `index` of `counted_study`, and the evaluator's
    warnings; ``{}`` when it cannot tell the parameters apart."""
    directions = [d.name.lower() for d in study.directions]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=LOWER_IS_BETTER)
        result = optuna.importance.get_param_importances(study, target=importance_target(directions, index))
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
    study = counted_study(data)
    for i, label in enumerate(labels):
        values, messages = _importances(study, i)
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
    """The best trials (`xvol_lab.study.standing.best_trials`): the Pareto front with several
    objectives, the best trial(s) with one; rows of `trials_table` without state and reason, best
    first objective first."""
    front = [t.number for t in best_trials(data.trials, data.directions)]
    table = trials_table(data).set_index("number", drop=False).loc[front]
    table = table.drop(columns=["state", "reason"]).reset_index(drop=True)
    if table.empty:
        table.attrs["note"] = "no complete trial yet"
    return table
