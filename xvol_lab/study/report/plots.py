"""The report's plots, drawn with matplotlib's object API (`matplotlib.figure.Figure`: no pyplot, no
display, no global backend switch; PNG through Agg). A plot with nothing to draw raises `NoData`
with the reason, which the report prints instead of the picture."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from xvol_lab.ops import OPS
from xvol_lab.study.report.source import StudyData
from xvol_lab.study.report.tables import objective_column

STATE_COLORS = {"complete": "tab:blue", "pruned": "tab:orange"}
OTHER_COLOR = "tab:gray"


class NoData(Exception):
    """The plot has nothing to draw; the message says why."""


def _require_complete(data: StudyData) -> None:
    if not data.complete:
        raise NoData("no complete trial yet")


def history_figure(data: StudyData) -> Figure:
    """Each objective against the trial number (complete trials), with the best so far (one objective)."""
    _require_complete(data)
    k = len(data.metric_names)
    fig = Figure(figsize=(7, 3 * k), layout="constrained")
    axes = fig.subplots(k, 1, squeeze=False)[:, 0]
    for i, (metric, direction) in enumerate(zip(data.metric_names, data.directions, strict=True)):
        ax: Axes = axes[i]
        xs = [t.number for t in data.complete]
        ys = [t.values[i] for t in data.complete]
        ax.scatter(xs, ys, color=STATE_COLORS["complete"], label="complete trial", zorder=3)
        if k == 1:
            pick = max if direction == "maximize" else min
            best = [pick(ys[: j + 1]) for j in range(len(ys))]
            ax.step(xs, best, where="post", color="tab:red", label="best so far")
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{objective_column(metric)} ({direction})")
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"{data.name}: optimization history")
    return fig


def stage_effect_figure(data: StudyData) -> Figure:
    """Objective values of the complete trials by the operator of each searched stage (one panel
    per stage and objective; a bar marks each operator's mean)."""
    _require_complete(data)
    stages = list(data.config.space.stage_choices())
    k = len(data.metric_names)
    fig = Figure(figsize=(3.2 * len(stages), 3 * k), layout="constrained")
    axes = fig.subplots(k, len(stages), squeeze=False)
    for row, metric in enumerate(data.metric_names):
        for col, stage in enumerate(stages):
            ax: Axes = axes[row, col]
            by_op: dict[str, list[float]] = {}
            for trial in data.complete:
                spec = data.spec(trial)
                if spec is not None:
                    by_op.setdefault(spec.stages[stage - 1].op, []).append(trial.values[row])
            ops = sorted(by_op, key=list(OPS).index)
            for x, op in enumerate(ops):
                values = by_op[op]
                ax.scatter([x] * len(values), values, color=STATE_COLORS["complete"], alpha=0.6, zorder=3)
                mean = sum(values) / len(values)
                ax.hlines(mean, x - 0.3, x + 0.3, color="tab:red", zorder=4)
            ax.set_xticks(range(len(ops)), ops, rotation=30, ha="right", fontsize="small")
            ax.set_xlim(-0.6, len(ops) - 0.4)
            ax.set_title(f"stage {stage}", fontsize="medium")
            if col == 0:
                ax.set_ylabel(objective_column(metric))
    fig.suptitle(f"{data.name}: objective by operator (bar: mean)")
    return fig


def importance_figure(table: pd.DataFrame) -> Figure:
    """Horizontal bars of `importance_table` (one group of bars per objective)."""
    if table.empty:
        raise NoData(table.attrs.get("note", "no parameter importances"))
    labels = [c for c in table.columns if c != "parameter"]
    fig = Figure(figsize=(7, 0.5 * len(table) * len(labels) + 1.5), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / len(labels)
    positions = list(range(len(table)))[::-1]
    for j, label in enumerate(labels):
        values = [0.0 if math.isnan(v) else v for v in table[label]]
        ax.barh([p - j * height for p in positions], values, height=height, label=label)
    ax.set_yticks([p - height * (len(labels) - 1) / 2 for p in positions], list(table["parameter"]))
    ax.set_xlabel("importance (sums to 1)")
    if len(labels) > 1:
        ax.legend(loc="best", fontsize="small")
    ax.set_title("parameter importance (Optuna)")
    return fig


def pareto_figure(data: StudyData) -> Figure:
    """Every pair of objectives: complete trials, the Pareto front highlighted and numbered."""
    if len(data.metric_names) < 2:
        raise NoData("single-objective study: no Pareto front")
    _require_complete(data)
    counted = {t.number for t in data.complete}
    front = [t for t in data.study.best_trials if t.number in counted]
    pairs = [(i, j) for i in range(len(data.metric_names)) for j in range(i + 1, len(data.metric_names))]
    fig = Figure(figsize=(5 * len(pairs), 4), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    for ax, (i, j) in zip(axes, pairs, strict=True):
        ax.scatter([t.values[i] for t in data.complete], [t.values[j] for t in data.complete],
                   color=OTHER_COLOR, alpha=0.6, label="complete trial")
        ordered = sorted(front, key=lambda t: (t.values[i], t.values[j]))
        ax.plot([t.values[i] for t in ordered], [t.values[j] for t in ordered], "o-", color="tab:red",
                label="Pareto front", zorder=3)
        for t in ordered:
            ax.annotate(str(t.number), (t.values[i], t.values[j]), textcoords="offset points", xytext=(4, 4),
                        fontsize="small")
        ax.set_xlabel(f"{objective_column(data.metric_names[i])} ({data.directions[i]})")
        ax.set_ylabel(f"{objective_column(data.metric_names[j])} ({data.directions[j]})")
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"{data.name}: Pareto front")
    return fig


def _curve(trial: FrozenTrial) -> tuple[list[int], list[float]]:
    steps = sorted(trial.intermediate_values)
    return steps, [trial.intermediate_values[s] for s in steps]


def intermediate_figure(data: StudyData) -> Figure:
    """The per-epoch values every trial reported to the pruner, coloured by how the trial ended."""
    trials = [t for t in data.trials if t.intermediate_values]
    if not trials:
        raise NoData("no trial reported per-epoch values; trials report them only when the study has "
                     "a pruner")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    labelled: set[str] = set()
    for trial in trials:
        state, _ = data.state(trial)
        color = STATE_COLORS.get(state, OTHER_COLOR)
        label = state if state in STATE_COLORS else "other"
        xs, ys = _curve(trial)
        ax.plot(xs, ys, "o-", color=color, alpha=0.7, markersize=3,
                label=None if label in labelled else label)
        labelled.add(label)
        if trial.state == TrialState.PRUNED:
            ax.annotate(str(trial.number), (xs[-1], ys[-1]), textcoords="offset points", xytext=(3, 3),
                        fontsize="x-small")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{data.metric_names[0]} (reported)")
    ax.legend(loc="best", fontsize="small")
    ax.set_title(f"{data.name}: intermediate values")
    return fig
