"""The report's tables, each a pandas DataFrame built from a `StudyData`.

Numbers stay numbers (NaN where unknown); notes for the reader (why a table is empty, what was
left out) are in ``df.attrs["note"]``. Only counted trials (`xvol_lab.study.ledger.counted`) that
completed enter the ablation, per-stage, importance and Pareto tables; the ablation and per-stage
tables group the runs of `xvol_lab.study.report.frame.seed_frame` (one per trial and seed).

Intervals of a mean stay within the metric's range (`xvol_lab.study.config.metric_range`: a loss
is never below 0, an accuracy never above 1): where the t interval would leave it, the table gives
the percentile-bootstrap interval (`xvol_lab.study.stats.nonnegative_interval`). ``val/acc5`` is
left out where the data has 5 classes or fewer (it is 1 by construction).

FLOPs follow torch's counter: a multiply-add is 2 FLOPs, so ``GFLOPs (2×MAC)`` is twice ``GMACs``
(the unit of torchvision's and most papers' ResNet figures: ResNet-50 at 224 px is 4.089 GMACs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import pandas as pd
from optuna.trial import FrozenTrial
from pandas.api.typing import SeriesGroupBy

from xvol_lab.data.config import BALANCED_NAMES
from xvol_lab.ops import OPS
from xvol_lab.study import sequential, stats
from xvol_lab.study.config import FLOPS_G, LATENCY_BATCH_MS, LATENCY_MS, PARAMS_M, metric_range
from xvol_lab.study.controls import NEGATIVE, POSITIVE
from xvol_lab.study.report.columns import (
    ALL_CONV,
    BEST_EPOCH,
    CHANGED,
    CONFIGURATION,
    DEVICE,
    DEVICE_ATTR,
    EPOCHS,
    FLOPS,
    GMACS,
    LATENCIES,
    LATENCY,
    MEASURED_COLUMNS,
    PAIR,
    PARAMS,
    ROLE,
    SEED,
    STAGE_COLUMNS,
    TRIAL,
    WALL,
)
from xvol_lab.study.report.frame import counted_study, latency_devices, seed_frame
from xvol_lab.study.report.source import StudyData, effective_stage, number_attr, user_metrics, wall_seconds
from xvol_lab.study.report.verdicts import control_verdict, verdict
from xvol_lab.study.space_config import STAGES
from xvol_lab.study.standing import best_trials
from xvol_lab.tasks.metrics import VAL_ACC5


def objective_column(metric: str) -> str:
    """The column of objective `metric`: the metric name, or the cost column of a measured one."""
    return MEASURED_COLUMNS.get(metric, metric)


def latency_batch_column(data: StudyData) -> str:
    """``latency b64 (ms)``: latency at the study's batch size."""
    return f"latency b{data.config.base.data.batch_size} (ms)"


def _meaningless(data: StudyData) -> tuple[str, ...]:
    """Logged metrics that say nothing about this study: top-5 accuracy with 5 classes or fewer."""
    d = data.config.base.data
    return (VAL_ACC5,) if d.name in BALANCED_NAMES and d.num_classes <= 5 else ()


def _stage_cells(data: StudyData, trial: FrozenTrial) -> dict[str, str]:
    spec = data.spec(trial)
    texts = [effective_stage(s).describe() for s in spec.stages] if spec is not None else [""] * len(STAGES)
    return dict(zip(STAGE_COLUMNS, texts, strict=True))


def trials_table(data: StudyData) -> pd.DataFrame:
    """Every trial: number, state and reason, the operator of each stage, the objectives and logged
    metrics (a trial's mean over its seeds), params, FLOPs, latency (batch 1 and the study's batch),
    GMACs, the latency's device (when recorded), epochs and wall time."""
    logged = [m for m in data.metric_names if m not in MEASURED_COLUMNS]
    logged += [m for m in user_metrics(data.trials) if m not in logged and m not in _meaningless(data)]
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
    """Rows in the order of the paper's tables: the baseline, the positive and negative controls, then
    by the stages a configuration changes."""
    changed = dict(zip(frame[CONFIGURATION], frame[CHANGED], strict=True))
    role = dict(zip(frame[CONFIGURATION], frame[ROLE], strict=True))
    rank = {POSITIVE: 1, NEGATIVE: 2}
    return lambda label: (label != baseline, rank.get(role[label], 3), len(changed[label]), changed[label],
                          label)


def baseline_configuration(frame: pd.DataFrame) -> str | None:
    """The all-conv configuration of `frame` (plain 3x3 convolutions preferred), None without one."""
    convs = frame[frame[ALL_CONV]]
    plain = convs[convs[CHANGED].map(len) == 0]
    for candidates in (plain, convs):
        if not candidates.empty:
            return str(candidates[CONFIGURATION].iloc[0])
    return None


STAT_KINDS = ("mean", "std", "n", "ci95_low", "ci95_high", "diff", "diff_ci95_low", "diff_ci95_high", "diff_std", "p",
              "p_exact", "p_seq", "p_holm", "mde", "sig", "verdict")


def stat_columns(label: str) -> list[str]:
    """The ablation table's columns for one objective (see `ablation_table`)."""
    return [f"{label} {kind}" for kind in STAT_KINDS]


def _split_by_device(data: StudyData, frame: pd.DataFrame) -> bool:
    """Latency is an objective and was measured on several devices: keep the devices apart."""
    return len(latency_devices(frame)) > 1 and any(m in LATENCIES for m in data.metric_names)


def ablation_table(data: StudyData) -> pd.DataFrame:
    """The paper's ablation: one row per configuration (distinct network), the baseline (all-conv)
    first, then the controls (``positive control: ...``, ``negative control: ...``), over its runs
    (counted complete trials x seeds, see `seed_frame`). For each objective: mean, std (ddof=1), n
    and the 95% interval of the mean; the difference to the baseline paired by seed (runs of one
    configuration with the same seed averaged first; the negative control's i-th seed with the
    baseline's i-th) with its 95% t interval, the paired t-test p, the exact sign-flip p, the
    sequential p of the study's seed design (`xvol_lab.study.sequential`; the t-test p with fixed
    seeds), its Holm correction across the rows, the minimum detectable difference (`mde`: 80%
    power at the Holm first step alpha / m, from the row's spread of paired differences and its
    number of pairs), ``*`` when the Holm p is below 0.05, and the verdict
    (`xvol_lab.study.report.verdicts`; on control rows for the first objective: detected / not
    distinguishable). Then params, GFLOPs (2 x MAC) and GMACs.

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
    by_seed = frame.groupby([*keys, PAIR])[data.metric_names].mean()
    roles = dict(zip(frame[CONFIGURATION], frame[ROLE], strict=True))
    design = data.config.budget.design
    for index, (metric, label, direction) in enumerate(zip(data.metric_names, labels, data.directions,
                                                           strict=True)):
        _add_interval(table, label, moments[metric], with_n=True)
        _keep_in_range(table, label, metric, grouped[metric])
        pairs = [_paired_to_baseline(by_seed[metric], key, baseline, design)
                 for key in table[keys].itertuples(index=False, name=None)]
        for kind in ("diff", "diff_ci95_low", "diff_ci95_high", "diff_std", "p", "p_exact", "p_seq"):
            table[f"{label} {kind}"] = [getattr(pair, kind) for pair in pairs]
        table[f"{label} p_holm"] = stats.holm(table[f"{label} p_seq"].tolist())
        level = design.alpha / max(int(table[f"{label} p_seq"].notna().sum()), 1)
        table[f"{label} mde"] = [_mde(pair, design, level) for pair in pairs]
        table[f"{label} sig"] = ["*" if stats.significant(p) else "" for p in table[f"{label} p_holm"]]
        found = [verdict(d, lo, hi, p, direction) if not math.isnan(d) and name != baseline else ""
                 for name, d, lo, hi, p in zip(table[CONFIGURATION], table[f"{label} diff"],
                                               table[f"{label} diff_ci95_low"], table[f"{label} diff_ci95_high"],
                                               table[f"{label} p_holm"], strict=True)]
        table[f"{label} verdict"] = [control_verdict(roles[name], word) if index == 0 and roles[name] and word
                                     else word for name, word in zip(table[CONFIGURATION], found, strict=True)]
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


@dataclass(frozen=True)
class _Pair:
    """A row against the baseline: `stats.paired`'s figures and the sequential p (NaN: no test)."""

    diff: float = math.nan
    diff_ci95_low: float = math.nan
    diff_ci95_high: float = math.nan
    p: float = math.nan
    p_exact: float = math.nan
    p_seq: float = math.nan
    diff_std: float = math.nan
    n: int = 0


def _paired_to_baseline(values: pd.Series, key: tuple, baseline: str | None,
                        design: sequential.SeedDesign) -> _Pair:
    """Group `key` (configuration[, device]) against the baseline on the same device, paired by
    seed; the baseline itself gets a difference of 0 and no test; NaN without one. The sequential
    p reads the paired differences in seed order (with fixed seeds it is the t-test's p)."""
    if baseline is None:
        return _Pair()
    base_key = (baseline, *key[1:])
    if key == base_key:
        return _Pair(diff=0.0)
    x = _seed_values(values, key)
    y = _seed_values(values, base_key)
    if not y:
        return _Pair()
    result = stats.paired(x, y)
    p_seq = result.p
    if design.sequential:
        common = sorted(s for s in set(x) & set(y) if not math.isnan(x[s]) and not math.isnan(y[s]))
        p_seq = sequential.sequential_p([x[s] - y[s] for s in common], design)
    return _Pair(result.diff, result.ci95_low, result.ci95_high, result.p, result.p_exact, p_seq, result.std,
                 result.n)


def _mde(pair: _Pair, design: sequential.SeedDesign, level: float) -> float:
    """The row's minimum detectable difference: 80% power at `level` (the Holm first step), or for a
    sequential design at the nominal level of the look the row stopped at."""
    if math.isnan(pair.p_seq):
        return math.nan
    nominal = level
    if design.sequential:
        looks = sequential.nominal_levels(design, level)
        nominal = float(looks[min(max(pair.n, design.min), design.max) - design.min])
    return stats.mde(pair.diff_std, pair.n, nominal)


def _keep_in_range(table: pd.DataFrame, label: str, metric: str, values: SeriesGroupBy) -> None:
    """Rows whose t interval of the mean leaves the metric's range get the bootstrap interval."""
    bounds = metric_range(metric)
    if bounds is None:
        return
    low_col, high_col = f"{label} ci95_low", f"{label} ci95_high"
    for i, (_, group) in enumerate(values):
        low, high = table.at[i, low_col], table.at[i, high_col]
        if not math.isnan(low) and (low < bounds[0] or high > bounds[1]):
            table.at[i, low_col], table.at[i, high_col] = stats.nonnegative_interval(group.tolist())


def _seed_values(values: pd.Series, key: tuple) -> dict[int, float]:
    """seed -> value of group `key` in `values` (indexed by the group keys and the seed)."""
    return {int(index[-1]): float(v) for index, v in values.items() if tuple(index[:-1]) == key}


def _no_rows(data: StudyData) -> str:
    if not data.complete:
        return "no complete trial yet"
    return "no complete trial has params that are a point of the study file's space"


# Samplers whose configurations do not depend on earlier results: intervals over them are valid.
NON_ADAPTIVE = ("grid", "random")


def stage_effects_table(data: StudyData) -> pd.DataFrame:
    """For each searched stage and each operator it took: the runs (trials x seeds) of every
    configuration with that operator there (controls left out), and per objective their mean, std,
    95% interval of the mean and the best run (latencies of several devices kept apart, as in
    `ablation_table`). With an adaptive sampler (TPE, NSGA-II) the configurations were chosen from
    earlier results, so no interval is valid: the table gives the runs' min and max instead and
    says in its note that it is descriptive."""
    frame = seed_frame(data)
    frame = frame[frame[ROLE] == ""]
    labels = [objective_column(m) for m in data.metric_names]
    split = _split_by_device(data, frame)
    keys = ["stage", "op", *([DEVICE] if split else [])]
    valid = data.config.sampler.name in NON_ADAPTIVE
    spread = ("ci95_low", "ci95_high") if valid else ("min", "max")
    columns = [*keys, "n"] + [f"{label} {kind}" for label in labels
                              for kind in ("mean", "std", *spread, "best")]
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
        if valid:
            _add_interval(table, label, moments, with_n=False)
            _keep_in_range(table, label, metric, grouped[metric])
        else:
            table[f"{label} mean"], table[f"{label} std"] = moments["mean"].to_numpy(), moments["std"].to_numpy()
            table[f"{label} min"], table[f"{label} max"] = moments["min"].to_numpy(), moments["max"].to_numpy()
        table[f"{label} best"] = moments["max" if direction == "maximize" else "min"].to_numpy()
    op_order = list(OPS)
    table = table.sort_values(["stage", "op"], kind="stable",
                              key=lambda col: col.map(op_order.index) if col.name == "op" else col)
    table = table.reset_index(drop=True)[columns]
    if not valid:
        table.attrs["note"] = (f"descriptive: the {data.config.sampler.name} sampler chose the configurations from "
                               "earlier results, so intervals over them would not be valid 95% intervals; min and "
                               "max of the runs instead")
    return table


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
