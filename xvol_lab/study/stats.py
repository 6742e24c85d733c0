"""Statistics of an ablation over seeds: means with t intervals, paired differences, tests, Holm.

Pure functions on plain sequences of floats (NaN and None are dropped). The distributions come
from `scipy.stats`.

- `summary`: mean, standard deviation (ddof=1), n and the 95% t interval
  ``mean ± t(0.975, n-1) · std / sqrt(n)``.
- `paired`: the difference x - y of two configurations trained with the same seeds, paired by
  seed, with its own 95% t interval and two p-values: the paired t-test (``p``, the one the
  report's significance marks use, consistent with the interval) and the exact sign-flip
  permutation test over all 2^n sign patterns (``p_exact``, no normality assumption). The exact
  test cannot go below ``2 / 2^n``: with 3 seeds never below 0.25, so at that budget it can never
  reach 0.05; that is why the t-test decides, and the exact p is shown beside it.
- `holm`: Holm's step-down correction of a family of p-values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
ALPHA = 0.05
EXACT_MAX_N = 16  # 2^16 sign patterns; beyond that the exact test is not computed


def finite(values: Sequence[float | None]) -> list[float]:
    """`values` without None and NaN, as floats."""
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1), n and the 95% t interval of the mean."""

    mean: float
    std: float
    n: int
    ci95_low: float
    ci95_high: float


def t_halfwidth(std: float, n: int, level: float = LEVEL) -> float:
    """``t((1 + level) / 2, n - 1) · std / sqrt(n)``; NaN for n < 2."""
    if n < 2:
        return math.nan
    return float(sps.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)


def summary(values: Sequence[float | None]) -> Summary:
    """Mean, std, n and 95% interval of `values` (std and interval NaN for n < 2, all NaN for n = 0)."""
    xs = finite(values)
    n = len(xs)
    if n == 0:
        return Summary(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(np.mean(xs))
    std = float(np.std(xs, ddof=1)) if n > 1 else math.nan
    half = t_halfwidth(std, n)
    return Summary(mean, std, n, mean - half, mean + half)


@dataclass(frozen=True)
class Paired:
    """x - y paired by seed: mean difference, its 95% t interval, the number of pairs, the paired
    t-test p-value and the exact sign-flip p-value (NaN where undefined)."""

    diff: float
    ci95_low: float
    ci95_high: float
    n: int
    p: float
    p_exact: float


def t_test_p(diffs: Sequence[float]) -> float:
    """Two-sided p of the one-sample t-test of mean(diffs) = 0 (the paired t-test). NaN for n < 2;
    with zero spread: 1 when every difference is 0, else 0 (the limit of the test)."""
    n = len(diffs)
    if n < 2:
        return math.nan
    mean, std = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
    if std == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (std / math.sqrt(n))
    return float(2 * sps.t.sf(abs(t), n - 1))


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided p of the sign-flip permutation test: the share of the 2^n sign patterns whose
    |sum| is at least the observed |sum|. NaN for n = 0 or n > EXACT_MAX_N."""
    n = len(diffs)
    if n == 0 or n > EXACT_MAX_N:
        return math.nan
    d = np.asarray(diffs, dtype=float)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2^n, n)
    sums = np.abs(signs @ d)
    observed = abs(float(d.sum()))
    return float(np.mean(sums >= observed - 1e-12 * max(1.0, observed)))


def paired(x_by_seed: Mapping[int, float], y_by_seed: Mapping[int, float]) -> Paired:
    """x - y over the seeds both have (finite values only)."""
    seeds = sorted(s for s in set(x_by_seed) & set(y_by_seed)
                   if finite([x_by_seed[s]]) and finite([y_by_seed[s]]))
    diffs = [float(x_by_seed[s]) - float(y_by_seed[s]) for s in seeds]
    s = summary(diffs)
    return Paired(s.mean, s.ci95_low, s.ci95_high, s.n, t_test_p(diffs), sign_flip_p(diffs))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN entries stay NaN and are not
    counted in the family size m. Sorted ascending, ``p_(i) · (m - i + 1)``, made monotone, capped at 1."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    m = len(present)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def significant(p_holm: float, alpha: float = ALPHA) -> bool:
    """Holm-adjusted p below `alpha`."""
    return not math.isnan(p_holm) and p_holm < alpha


def excludes_zero(low: float, high: float) -> bool:
    """The interval [low, high] lies strictly on one side of 0."""
    return (low > 0 and high > 0) or (low < 0 and high < 0)
