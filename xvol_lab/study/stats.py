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
- `mde` / `seeds_needed`: power of the two-sided paired t-test from the noncentral t distribution:
  the smallest |difference| detected with probability `POWER` at level alpha with n pairs, and the
  pairs needed to detect a given difference.
- `nonnegative_interval`: a 95% percentile-bootstrap interval of the mean for quantities that cannot
  be negative (a loss): it never goes below 0, where a t interval can.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as sps

LEVEL = 0.95
ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_RESAMPLES = 4000
MAX_SEEDS_NEEDED = 100_000  # `seeds_needed` gives up beyond this
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
    t-test p-value, the exact sign-flip p-value and the differences' std (NaN where undefined)."""

    diff: float
    ci95_low: float
    ci95_high: float
    n: int
    p: float
    p_exact: float
    std: float  # of the paired differences (ddof=1; NaN for n < 2)


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
    return Paired(s.mean, s.ci95_low, s.ci95_high, s.n, t_test_p(diffs), sign_flip_p(diffs), s.std)


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


def t_power(noncentrality: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample (paired) t-test at level `alpha` with `n` pairs when the
    true standardised shift is ``noncentrality = delta * sqrt(n) / sd``: P(|T'| > t(1 - alpha/2, n - 1))
    with T' noncentral t (n - 1 degrees of freedom)."""
    df = n - 1
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    # P(T'(nc) < -crit) = P(T'(-nc) > crit): the upper tail stays finite where the cdf gives NaN
    return float(sps.nct.sf(crit, df, noncentrality) + sps.nct.sf(crit, df, -noncentrality))


def mde(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The minimum detectable |mean difference| of a paired t-test with `n` pairs whose differences
    have standard deviation `std`: the shift detected with probability `power` at two-sided level
    `alpha`. NaN for n < 2, an unknown std, or zero spread (identical differences say nothing about
    the spread: typically a metric at its floor or ceiling, where no effect can show)."""
    if n < 2 or math.isnan(std) or std == 0.0:
        return math.nan
    high = 1.0
    while t_power(high, n, alpha) < power:
        high *= 2
    noncentrality = optimize.brentq(lambda nc: t_power(nc, n, alpha) - power, 0.0, high, xtol=1e-10)
    return float(noncentrality * std / math.sqrt(n))


def seeds_needed(std: float, effect: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The fewest pairs (>= 2) with which a paired t-test detects a mean difference of |`effect`|
    with probability `power` at two-sided level `alpha`, when the differences have standard
    deviation `std`; None when the std is unknown or more than `MAX_SEEDS_NEEDED` would be needed."""
    if math.isnan(std) or effect == 0:
        return None
    if std == 0.0:
        return 2

    def enough(n: int) -> bool:
        return t_power(abs(effect) * math.sqrt(n) / std, n, alpha) >= power

    if not enough(MAX_SEEDS_NEEDED):
        return None
    low, high = 1, 2
    while not enough(high):
        low, high = high, high * 2
    while high - low > 1:  # enough(high), not enough(low) (low = 1 is never enough)
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def nonnegative_interval(values: Sequence[float | None], level: float = LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap `level` interval of the mean of non-negative `values` (fixed resamples,
    so a report is repeatable); it lies within [min, max] of the values, never below 0. NaN for n < 2."""
    xs = np.asarray(finite(values), dtype=float)
    if len(xs) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(0)
    means = xs[rng.integers(0, len(xs), size=(BOOTSTRAP_RESAMPLES, len(xs)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.clip(np.quantile(means, [tail, 1 - tail]), xs.min(), xs.max())  # no round-off past them
    return float(low), float(high)
