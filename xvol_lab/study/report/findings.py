"""The ablation in words: a verdict for each difference to the baseline, a compact view of the
ablation table for report.md, and the task's trivial level (`xvol_lab.study.trivial`) beside the
baseline.

A difference is *distinguishable* when its 95% interval excludes 0 and its Holm-corrected paired
t-test p is below 0.05; then it is better or worse in the objective's direction. Otherwise it is
"not distinguishable from all-conv at this budget" (or has too few paired seeds for an interval).
"""

from __future__ import annotations

import logging
import math

import pandas as pd

from xvol_lab.errors import ConfigError
from xvol_lab.markdown import format_number
from xvol_lab.study import stats
from xvol_lab.study.config import StudyConfig
from xvol_lab.study.report.frame import CONFIGURATION, DEVICE
from xvol_lab.study.report.source import StudyData
from xvol_lab.study.report.tables import objective_column
from xvol_lab.study.trivial import DETECTION_METRICS, trivial_level
from xvol_lab.tasks.metrics import VAL_ACC1, VAL_ACC5, VAL_MIOU, VAL_PIXEL_ACC

log = logging.getLogger(__name__)

BETTER, WORSE, SAME, TOO_FEW = "better", "worse", "not distinguishable", "too few seeds"
TRIVIAL_HOW = {VAL_ACC1: "always the most frequent class", VAL_ACC5: "always the five most frequent classes",
               VAL_MIOU: "background everywhere", VAL_PIXEL_ACC: "background everywhere",
               **{m: "no detections" for m in DETECTION_METRICS}}


def verdict(diff: float, low: float, high: float, p_holm: float, direction: str) -> str:
    """`BETTER` / `WORSE` (interval excludes 0 and Holm p < 0.05, in the objective's `direction`),
    `SAME` (not distinguishable), or `TOO_FEW` (no interval: fewer than 2 paired seeds)."""
    if math.isnan(low) or math.isnan(high):
        return TOO_FEW
    if not (stats.excludes_zero(low, high) and stats.significant(p_holm)):
        return SAME
    return BETTER if (diff > 0) == (direction == "maximize") else WORSE


def signed(value: float) -> str:
    """``+0.0123`` / ``-0.0045``; '' for NaN."""
    return "" if math.isnan(value) else ("+" if value >= 0 else "") + format_number(float(value))


def interval(low: float, high: float) -> str:
    """``[0.59, 0.63]``; '' when unknown."""
    return "" if math.isnan(low) else f"[{format_number(float(low))}, {format_number(float(high))}]"


def difference_text(label: str, row: pd.Series) -> str:
    """``val/acc1 +0.012, 95% CI [-0.003, 0.027], Holm p 0.41 (3 seeds)``."""
    text = f"{label} {signed(row[f'{label} diff'])}"
    if not math.isnan(row[f"{label} diff_ci95_low"]):
        text += f", 95% CI {interval(row[f'{label} diff_ci95_low'], row[f'{label} diff_ci95_high'])}"
    if not math.isnan(row[f"{label} p_holm"]):
        text += f", Holm p {format_number(float(row[f'{label} p_holm']))}"
    return text + f" ({int(row[f'{label} n'])} runs)"


def row_name(row: pd.Series) -> str:
    """The configuration, with the latency device when rows are split by device."""
    device = row.get(DEVICE, "")
    name = str(row[CONFIGURATION])
    return f"{name} [{device}]" if isinstance(device, str) and device else name


def ablation_findings(data: StudyData, table: pd.DataFrame) -> list[str]:
    """One sentence per configuration other than the baseline and objective, in table order."""
    out = []
    for _, row in table.iterrows():
        if row[CONFIGURATION] == table.attrs.get("baseline"):
            continue
        for metric, direction in zip(data.metric_names, data.directions, strict=True):
            label = objective_column(metric)
            diff = row[f"{label} diff"]
            if math.isnan(diff):
                continue
            found = verdict(diff, row[f"{label} diff_ci95_low"], row[f"{label} diff_ci95_high"],
                            row[f"{label} p_holm"], direction)
            words = {BETTER: "better than all-conv", WORSE: "worse than all-conv",
                     SAME: "not distinguishable from all-conv at this budget",
                     TOO_FEW: "too few paired seeds for an interval; not distinguishable from all-conv "
                              "at this budget"}[found]
            out.append(f"{row_name(row)}: {words} ({difference_text(label, row)})")
    return out


def compact_ablation(data: StudyData, table: pd.DataFrame) -> pd.DataFrame:
    """The ablation table for reading: configuration, runs, seeds, and per objective the mean with
    its interval, the paired difference with its interval, the Holm p and the mark."""
    keys = [CONFIGURATION, *([DEVICE] if DEVICE in table else [])]
    out = table[[*keys, "n", "seeds"]].copy()
    for metric in data.metric_names:
        label = objective_column(metric)
        out[f"{label} mean [95% CI]"] = [
            f"{format_number(float(m))} {interval(lo, hi)}".strip()
            for m, lo, hi in zip(table[f"{label} mean"], table[f"{label} ci95_low"],
                                 table[f"{label} ci95_high"], strict=True)]
        out[f"{label} diff [95% CI]"] = [
            "baseline" if name == table.attrs.get("baseline") else f"{signed(d)} {interval(lo, hi)}".strip()
            for name, d, lo, hi in zip(table[CONFIGURATION], table[f"{label} diff"],
                                       table[f"{label} diff_ci95_low"], table[f"{label} diff_ci95_high"],
                                       strict=True)]
        out[f"{label} p (Holm)"] = table[f"{label} p_holm"]
        out[f"{label} sig"] = table[f"{label} sig"]
    return out


def trivial_text(config: StudyConfig) -> str:
    """``val/acc1 0.1 (always the most frequent class)``: `xvol_lab.study.trivial.trivial_level` of
    the study's objectives; '' when none has one or the validation data cannot be read."""
    try:
        levels = trivial_level(config)
    except (ConfigError, OSError) as err:
        log.warning("no trivial level: %s", err)
        return ""
    return "; ".join(f"{m} {format_number(v)} ({TRIVIAL_HOW.get(m, 'trivial')})" for m, v in levels.items())


def baseline_text(data: StudyData, table: pd.DataFrame, trivial: str) -> str:
    """``all-conv (conv everywhere): val/acc1 0.61 [0.59, 0.63]; trivial level <trivial>`` (`trivial`:
    `trivial_text`); '' without a baseline."""
    baseline = table.attrs.get("baseline")
    if baseline is None:
        return ""
    row = table[table[CONFIGURATION] == baseline].iloc[0]
    means = ", ".join(f"{label} {format_number(float(row[f'{label} mean']))} "
                      f"{interval(row[f'{label} ci95_low'], row[f'{label} ci95_high'])}".strip()
                      for label in (objective_column(m) for m in data.metric_names))
    return f"all-conv ({baseline}): {means}" + (f"; trivial level {trivial}" if trivial else "")
