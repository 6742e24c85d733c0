"""What a row of an ablation says about its difference to the baseline, in words.

A difference is *distinguishable* when its 95% interval excludes 0 and its Holm-corrected p is below
0.05; then it is better or worse in the objective's direction. Otherwise it is not distinguishable,
which is only ever written with the minimum detectable effect (MDE) beside it. Control rows are
read as the controls they are: a positive control is *detected* (worse than the baseline), a
negative control must be *not distinguishable*.
"""

from __future__ import annotations

import math

from xvol_lab.markdown import format_number
from xvol_lab.study import stats
from xvol_lab.study.controls import NEGATIVE, POSITIVE

BETTER, WORSE, SAME, TOO_FEW = "better", "worse", "not distinguishable", "too few seeds"
DETECTED, NOT_DETECTED = "detected", "not detected"
FALSE_POSITIVE = "distinguishable (a false positive)"
BLIND = "this budget cannot detect effects of this size"


def verdict(diff: float, low: float, high: float, p_holm: float, direction: str) -> str:
    """`BETTER` / `WORSE` (interval excludes 0 and Holm p < 0.05, in the objective's `direction`),
    `SAME` (not distinguishable), or `TOO_FEW` (no interval: fewer than 2 paired seeds)."""
    if math.isnan(low) or math.isnan(high):
        return TOO_FEW
    if not (stats.excludes_zero(low, high) and stats.significant(p_holm)):
        return SAME
    return BETTER if (diff > 0) == (direction == "maximize") else WORSE


def control_verdict(role: str, found: str) -> str:
    """A control's verdict from its row's `verdict`: positive `DETECTED` when worse than the baseline,
    else `NOT_DETECTED`; negative `SAME` when not distinguishable, else `FALSE_POSITIVE`."""
    if role == POSITIVE:
        return DETECTED if found == WORSE else NOT_DETECTED
    if role == NEGATIVE:
        return FALSE_POSITIVE if found in (BETTER, WORSE) else found
    raise ValueError(f"role: got {role!r}, expected {POSITIVE!r} or {NEGATIVE!r}")


def mde_text(mde: float) -> str:
    """``MDE 0.031`` (the minimum detectable difference at 80% power), or ``MDE unknown`` (fewer than
    2 paired seeds, or paired differences without spread)."""
    if math.isnan(mde):
        return "MDE unknown (fewer than 2 paired seeds, or no spread between them)"
    return f"MDE {format_number(float(mde))}"
