"""Rank agreement between two scorings of the same architectures (one-shot vs stand-alone).

- `kendall_tau`: Kendall's tau-b (ties in either scoring handled), from the pairs' concordance.
- `spearman_rho`: Pearson correlation of the average ranks.
- `bootstrap_interval`: a 95% percentile-bootstrap interval of either, resampling architectures
  (pairs) with a fixed generator so a report is repeatable; resamples in which a scoring is
  constant (undefined correlation) are left out.
- `regret`: how far the best stand-alone score among the chosen ones falls below the best overall.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of the paired scores; NaN with fewer than 2 pairs or a constant scoring."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(a), k=1)
    dx, dy = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    denominator = math.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return float(np.sum(dx * dy)) / denominator if denominator else math.nan


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when undefined."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(a) - (len(a) + 1) / 2, _ranks(b) - (len(b) + 1) / 2
    denominator = math.sqrt(float(np.sum(ra * ra) * np.sum(rb * rb)))
    return float(np.sum(ra * rb)) / denominator if denominator else math.nan


def bootstrap_interval(statistic: Callable[[Sequence[float], Sequence[float]], float], x: Sequence[float],
                       y: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap `level` interval of `statistic(x, y)` over resampled pairs; NaN for n < 3."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3:
        return math.nan, math.nan
    rng = np.random.default_rng(0)
    draws = [statistic(a[idx], b[idx]) for idx in rng.integers(0, len(a), size=(RESAMPLES, len(a)))]
    values = np.asarray([d for d in draws if not math.isnan(d)])
    if not len(values):
        return math.nan, math.nan
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def regret(chosen: Sequence[float], all_scores: Sequence[float]) -> float:
    """max(all) - max(chosen) of stand-alone scores (higher is better): 0 when the best was chosen."""
    return max(all_scores) - max(chosen)
