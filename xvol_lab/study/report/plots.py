"""The report's plots. History, intermediate values, importances and the Pareto front are Optuna's
(`optuna.visualization.matplotlib`) drawn from `counted_study` (the counted trials under their own
numbers); the ablation and per-stage plots are drawn here because they show what Optuna's do not:
means and paired differences with their 95% intervals as error bars. A plot with nothing to draw
raises `NoData` with the reason, which the report prints instead of the picture.

Optuna draws on pyplot figures: the caller saves a figure, then `close`s it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from optuna.visualization import matplotlib as optuna_plots

from xvol_lab.study.report.columns import CONFIGURATION, DEVICE
from xvol_lab.study.report.source import StudyData
from xvol_lab.study.report.tables import importance_target, objective_column


class NoData(Exception):
    """The plot has nothing to draw; the message says why."""


def close(figure: Figure) -> None:
    """Release a figure (Optuna's are registered with pyplot)."""
    plt.close(figure)


def _optuna(draw: Callable[[], Axes | np.ndarray]) -> Axes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = draw()
    return axes if isinstance(axes, Axes) else np.ravel(axes)[0]


def _retitle(ax: Axes, title: str) -> None:
    """Replace the title Optuna drew (at any position) with `title`."""
    for loc in ("center", "right"):
        ax.set_title("", loc=loc)
    ax.set_title(title, loc="left")


def _labels(data: StudyData) -> list[str]:
    return [objective_column(m) for m in data.metric_names]


def _require_complete(data: StudyData) -> None:
    if not data.complete:
        raise NoData("no complete trial yet")


def history_figure(data: StudyData, study: optuna.Study) -> Figure:
    """Optuna's optimization history of the first objective (the mean over seeds per trial)."""
    _require_complete(data)
    label = _labels(data)[0]
    ax = _optuna(lambda: optuna_plots.plot_optimization_history(
        study, target=(lambda t: t.values[0]) if len(data.metric_names) > 1 else None, target_name=label))
    _retitle(ax, f"{data.name}: optimization history ({label})")
    return ax.figure


def intermediate_figure(data: StudyData, study: optuna.Study) -> Figure:
    """Optuna's per-epoch values reported to the pruner, one line per counted trial."""
    if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        raise NoData("no trial reported per-epoch values; trials report them only when the study has "
                     "a pruner")
    ax = _optuna(lambda: optuna_plots.plot_intermediate_values(study))
    ax.set_ylabel(f"{data.metric_names[0]} (reported)")
    _retitle(ax, f"{data.name}: intermediate values")
    return ax.figure


def importance_figure(data: StudyData, study: optuna.Study, table: pd.DataFrame) -> Figure:
    """Optuna's parameter importances of the first objective, as `importance_table` computes them."""
    if table.empty:
        raise NoData(table.attrs.get("note", "no parameter importances"))
    label = _labels(data)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the evaluator's warnings are in the importance table's note
        ax = _optuna(lambda: optuna_plots.plot_param_importances(
            study, target=importance_target(data.directions, 0), target_name=label))
    _retitle(ax, f"{data.name}: parameter importance ({label})")
    return ax.figure


def pareto_figure(data: StudyData, study: optuna.Study) -> Figure:
    """Optuna's Pareto front (2 or 3 objectives)."""
    if len(data.metric_names) < 2:
        raise NoData("single-objective study: no Pareto front")
    if len(data.metric_names) > 3:
        raise NoData("more than 3 objectives: see the Pareto table")
    _require_complete(data)
    ax = _optuna(lambda: optuna_plots.plot_pareto_front(study, target_names=_labels(data)))
    return ax.figure


def _yerr(table: pd.DataFrame, center: str, low: str, high: str) -> np.ndarray:
    """Error bar lengths below and above `center` (0 where the interval is unknown, n < 2)."""
    below = (table[center] - table[low]).fillna(0.0).to_numpy(dtype=float)
    above = (table[high] - table[center]).fillna(0.0).to_numpy(dtype=float)
    return np.vstack([below, above])


def ablation_figure(data: StudyData, table: pd.DataFrame) -> Figure:
    """Per objective: each configuration's paired difference to the all-conv baseline with its 95%
    interval (`ablation_table`); a bar crossing the dashed zero line is not distinguishable."""
    labels = _labels(data)
    rows = table[table[f"{labels[0]} diff"].notna() & table[f"{labels[0]} diff_ci95_low"].notna()]
    if rows.empty:
        raise NoData(table.attrs.get("note") or "no configuration paired with the all-conv baseline by 2 or "
                     "more seeds")
    names = [c if DEVICE not in rows or not d else f"{c} [{d}]"
             for c, d in zip(rows[CONFIGURATION], rows.get(DEVICE, [""] * len(rows)), strict=True)]
    fig = Figure(figsize=(6 * len(labels), 0.5 * len(rows) + 1.8), layout="constrained")
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    for ax, label in zip(axes, labels, strict=True):
        ys = list(range(len(rows)))[::-1]
        ax.errorbar(rows[f"{label} diff"], ys, xerr=_yerr(rows, f"{label} diff", f"{label} diff_ci95_low",
                                                          f"{label} diff_ci95_high"),
                    fmt="o", capsize=4, color="tab:blue")
        ax.axvline(0.0, color="tab:gray", linestyle="--")
        ax.set_yticks(ys, names if ax is axes[0] else [""] * len(ys))
        ax.set_xlabel(f"{label}: difference to all-conv (95% CI)")
    fig.suptitle(f"{data.name}: paired difference to all-conv by seed")
    return fig


def stage_effect_figure(data: StudyData, table: pd.DataFrame) -> Figure:
    """Per searched stage and objective: each operator's mean over its runs with the 95% interval
    (`stage_effects_table`; adaptive samplers: the runs' min and max, descriptive)."""
    if table.empty:
        raise NoData(table.attrs.get("note", "no complete trial yet"))
    valid = f"{_labels(data)[0]} ci95_low" in table
    stages = list(dict.fromkeys(table["stage"]))
    labels = _labels(data)
    fig = Figure(figsize=(max(5.0, 3.2 * len(stages)), 3 * len(labels)), layout="constrained")
    axes = fig.subplots(len(labels), len(stages), squeeze=False)
    for row, label in enumerate(labels):
        for col, stage in enumerate(stages):
            ax: Axes = axes[row, col]
            part = table[table["stage"] == stage].reset_index(drop=True)
            ticks = [op if DEVICE not in part or not part.loc[i, DEVICE] else f"{op} [{part.loc[i, DEVICE]}]"
                     for i, op in enumerate(part["op"])]
            low, high = (f"{label} ci95_low", f"{label} ci95_high") if valid else (f"{label} min", f"{label} max")
            ax.errorbar(range(len(part)), part[f"{label} mean"], yerr=_yerr(part, f"{label} mean", low, high),
                        fmt="o", capsize=4, color="tab:blue")
            for x, n in enumerate(part["n"]):
                mean = part.loc[x, f"{label} mean"]
                if not math.isnan(mean):
                    ax.annotate(f"n={n}", (x, mean), textcoords="offset points", xytext=(6, 0),
                                fontsize="x-small")
            ax.set_xticks(range(len(part)), ticks, rotation=30, ha="right", fontsize="small")
            ax.set_xlim(-0.6, len(part) - 0.4)
            ax.set_title(f"stage {stage}", fontsize="medium")
            if col == 0:
                ax.set_ylabel(label)
    fig.suptitle(f"{data.name}: by operator (mean, {'95% CI' if valid else 'min-max of the runs, descriptive'})")
    return fig
