"""The ablation in words: a verdict for each difference to the baseline (`verdicts`) with its
minimum detectable effect, the controls' verdicts, a compact view of the ablation table for
report.md, and the task's trivial level (`xvol_lab.study.trivial`) beside the baseline.

A difference that is not distinguishable is written with its MDE beside it; when the study's
positive control was not detected, the study says "this budget cannot detect effects of this size"
instead (`blind`).
"""

from __future__ import annotations

import logging
import math

import pandas as pd

from xvol_lab.errors import ConfigError
from xvol_lab.markdown import format_number
from xvol_lab.study.config import StudyConfig
from xvol_lab.study.controls import POSITIVE, ROLE_LABEL
from xvol_lab.study.report.columns import CONFIGURATION, DEVICE
from xvol_lab.study.report.source import StudyData
from xvol_lab.study.report.tables import objective_column
from xvol_lab.study.report.verdicts import (
    BETTER,
    BLIND,
    DETECTED,
    FALSE_POSITIVE,
    NOT_DETECTED,
    SAME,
    TOO_FEW,
    WORSE,
    mde_text,
)
from xvol_lab.study.trivial import DETECTION_METRICS, trivial_level
from xvol_lab.tasks.metrics import VAL_ACC1, VAL_ACC5, VAL_MIOU, VAL_PIXEL_ACC

log = logging.getLogger(__name__)

TRIVIAL_HOW = {VAL_ACC1: "always the most frequent class", VAL_ACC5: "always the five most frequent classes",
               VAL_MIOU: "background everywhere", VAL_PIXEL_ACC: "background everywhere",
               **{m: "no detections" for m in DETECTION_METRICS}}


def blind(data: StudyData, table: pd.DataFrame) -> bool:
    """The study has a positive control and it was not detected on the first objective."""
    rows = table[table[CONFIGURATION].str.startswith(ROLE_LABEL[POSITIVE])] if not table.empty else table
    if data.config.controls.positive is None:
        return False
    label = objective_column(data.metric_names[0])
    return rows.empty or rows[f"{label} verdict"].iloc[0] != DETECTED


def signed(value: float) -> str:
    """``+0.0123`` / ``-0.0045``; '' for NaN."""
    return "" if math.isnan(value) else ("+" if value >= 0 else "") + format_number(float(value))


def interval(low: float, high: float) -> str:
    """``[0.59, 0.63]``; '' when unknown."""
    return "" if math.isnan(low) else f"[{format_number(float(low))}, {format_number(float(high))}]"


def difference_text(label: str, row: pd.Series) -> str:
    """``val/acc1 +0.012, 95% CI [-0.003, 0.027], Holm p 0.41, MDE 0.031 (3 runs)``."""
    text = f"{label} {signed(row[f'{label} diff'])}"
    if not math.isnan(row[f"{label} diff_ci95_low"]):
        text += f", 95% CI {interval(row[f'{label} diff_ci95_low'], row[f'{label} diff_ci95_high'])}"
    if not math.isnan(row[f"{label} p_holm"]):
        text += f", Holm p {format_number(float(row[f'{label} p_holm']))}"
    return text + f", {mde_text(row[f'{label} mde'])} ({int(row[f'{label} n'])} runs)"


def verdict_words(found: str, mde: float, is_blind: bool) -> str:
    """A row's verdict against all-conv in words; "not distinguishable" always carries its MDE, and
    becomes `BLIND` in a study whose positive control was not detected."""
    if found in (SAME, TOO_FEW):
        if is_blind:
            return f"{BLIND} ({mde_text(mde)})"
        return f"not distinguishable from all-conv at this budget ({mde_text(mde)})"
    return {BETTER: "better than all-conv", WORSE: "worse than all-conv", DETECTED: "detected (worse than all-conv)",
            NOT_DETECTED: f"NOT detected: {BLIND}", FALSE_POSITIVE: "distinguishable from all-conv: a false "
            "positive of the test (it compares all-conv with itself)"}.get(found, found)


def row_name(row: pd.Series) -> str:
    """The configuration, with the latency device when rows are split by device."""
    device = row.get(DEVICE, "")
    name = str(row[CONFIGURATION])
    return f"{name} [{device}]" if isinstance(device, str) and device else name


def ablation_findings(data: StudyData, table: pd.DataFrame) -> list[str]:
    """One sentence per configuration other than the baseline and objective, in table order."""
    out = []
    is_blind = blind(data, table)
    for _, row in table.iterrows():
        if row[CONFIGURATION] == table.attrs.get("baseline"):
            continue
        for metric in data.metric_names:
            label = objective_column(metric)
            if math.isnan(row[f"{label} diff"]):
                continue
            words = verdict_words(row[f"{label} verdict"], row[f"{label} mde"], is_blind)
            out.append(f"{row_name(row)}: {words} ({difference_text(label, row)})")
    return out


def compact_ablation(data: StudyData, table: pd.DataFrame) -> pd.DataFrame:
    """The ablation table for reading: configuration, runs, seeds, and per objective the mean with
    its interval, the paired difference with its interval, the Holm p, the MDE and the verdict."""
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
        out[f"{label} MDE"] = table[f"{label} mde"]
        out[f"{label} verdict"] = table[f"{label} verdict"]
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
