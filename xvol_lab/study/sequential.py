"""Seeds added where a comparison is undecided, with the false-positive rate kept at alpha.

A configuration is compared with the baseline by the paired t-test on the seeds both ran. With
``budget.seeds: {min, max}`` it first trains `min` seeds; after each further seed (a *look* at
n = min, min + 1, ..., max pairs) it stops as soon as its comparison is decided, else it trains the
next seed, up to `max`. Testing at every look inflates the false-positive rate of a plain t-test;
this module's p-value does not:

- at look k (n_k pairs) the paired t-test gives p_k; with weights ``w_k = (n_k / max) ** SPEND``
  (little of alpha spent early, most at the last look, as in O'Brien-Fleming-like designs) the
  statistic is ``M = min_k p_k / w_k`` over the looks taken;
- the sequential p-value is ``p_seq = P_H0(min over all planned looks of p_k / w_k <= M)``. Under
  H0 (normal paired differences of mean 0) the t statistics of the looks have a joint distribution
  that does not depend on the spread, so this is computed once per design by simulating
  `NULL_PATHS` Gaussian sequences with a fixed seed (repeatable reports);
- the looks actually taken are a subset of the planned ones, so ``P_H0(p_seq <= a) <= a`` for every
  a and every stopping rule: `p_seq` is a valid p-value that Holm's correction can take across the
  ablation's rows. With min = max there is one look and p_seq is the paired t-test's p.

The stopping rule (`decided`): stop when ``p_seq < alpha / m`` (m: the rows compared with the
baseline), i.e. when the row would be rejected at any rank of Holm's procedure. The per-look
nominal levels it implies are `nominal_levels`. `stop_looks` applies the same rule to many
simulated studies at once (the A/A test in tests/test_sequential.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from xvol_lab.study.stats import ALPHA

SPEND = 2.0  # w_k = (n_k / max) ** SPEND
NULL_PATHS = 200_000
NULL_SEED = 20_106_022  # the paper's arXiv number: any fixed seed makes reports repeatable


@dataclass(frozen=True)
class SeedDesign:
    """Looks at n = `min` .. `max` pairs; decisions at family level `alpha`."""

    min: int
    max: int
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        if self.min < 1 or self.max < self.min:
            raise ValueError(f"seeds: got min {self.min}, max {self.max}; expected 1 <= min <= max")
        if self.min < self.max and self.min < 2:
            raise ValueError(f"seeds: got min {self.min}, expected at least 2 when max > min "
                             "(a paired t-test needs 2 seeds)")

    @property
    def sequential(self) -> bool:
        """More than one look."""
        return self.max > self.min

    @property
    def looks(self) -> np.ndarray:
        """The pair counts of the planned looks."""
        return np.arange(self.min, self.max + 1)

    @property
    def weights(self) -> np.ndarray:
        """w_k per planned look."""
        return (self.looks / self.max) ** SPEND


def _t_pvalues(paths: np.ndarray, looks: np.ndarray) -> np.ndarray:
    """Two-sided paired t-test p at each look for each row of `paths` (S, n): shape (S, len(looks));
    NaN where a row has fewer than n_k values (NaN-padded). Zero spread: 1 for a zero mean, else 0."""
    n = np.arange(1, paths.shape[1] + 1)
    filled = np.nan_to_num(paths)
    sums, squares = np.cumsum(filled, axis=1), np.cumsum(filled * filled, axis=1)
    mean = sums / n
    var = np.maximum(squares - n * mean * mean, 0.0) / np.maximum(n - 1, 1)
    out = np.full((paths.shape[0], len(looks)), np.nan)
    for j, k in enumerate(looks):
        if k < 2 or k > paths.shape[1]:
            continue
        m, v = mean[:, k - 1], var[:, k - 1]
        scale = np.sqrt(v / k)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(m) / scale
        p = 2 * sps.t.sf(t, k - 1)
        zero = scale <= 1e-12 * np.maximum(np.abs(m), 1e-300)
        p = np.where(zero, np.where(m == 0, 1.0, 0.0), p)
        present = ~np.isnan(paths[:, k - 1])
        out[:, j] = np.where(present, p, np.nan)
    return out


@functools.lru_cache(maxsize=16)
def _null_statistic(low: int, high: int) -> np.ndarray:
    """Sorted null draws of min over all planned looks of p_k / w_k for design (low, high)."""
    design = SeedDesign(low, high)
    rng = np.random.default_rng(NULL_SEED)
    paths = rng.standard_normal((NULL_PATHS, high))
    return np.sort(np.min(_t_pvalues(paths, design.looks) / design.weights, axis=1))


def _to_p(design: SeedDesign, statistic: np.ndarray) -> np.ndarray:
    """p_seq of observed statistics M (NaN stays NaN)."""
    if not design.sequential:
        return statistic  # one look with weight 1: M is the t-test's p
    null = _null_statistic(design.min, design.max)
    p = np.searchsorted(null, statistic, side="right") / len(null)
    return np.where(np.isnan(statistic), np.nan, np.minimum(p, 1.0))


def sequential_paths(diffs: np.ndarray, design: SeedDesign) -> np.ndarray:
    """p_seq after each planned look for each row of `diffs` ((S, n) paired differences in seed
    order, NaN-padded): shape (S, number of looks), NaN for looks the row has not reached."""
    p = _t_pvalues(np.atleast_2d(np.asarray(diffs, dtype=float)), design.looks)
    with np.errstate(invalid="ignore"):
        running = np.fmin.accumulate(p / design.weights, axis=1)
    running = np.where(np.isnan(p), np.nan, running)
    return _to_p(design, running)


def sequential_p(diffs: Sequence[float], design: SeedDesign) -> float:
    """p_seq of one comparison over its paired differences in seed order (every look up to their
    number); NaN with fewer than `design.min` pairs (or fewer than 2)."""
    values = [float(d) for d in diffs]
    if len(values) < max(design.min, 2):
        return math.nan
    looks = sequential_paths(np.asarray(values[: design.max]), design)[0]
    reached = looks[~np.isnan(looks)]
    return float(reached[-1]) if len(reached) else math.nan


def decision_level(design: SeedDesign, rows: int) -> float:
    """The p_seq below which a comparison is decided: alpha / m (Holm's first step over `rows`)."""
    return design.alpha / max(rows, 1)


def decided(diffs: Sequence[float], design: SeedDesign, rows: int) -> bool:
    """Whether a configuration with these paired differences (seed order) needs no more seeds:
    its p_seq is below `decision_level`, or it has reached `design.max` pairs."""
    if len(diffs) >= design.max:
        return True
    p = sequential_p(diffs, design)
    return not math.isnan(p) and p < decision_level(design, rows)


def stop_looks(diffs: np.ndarray, design: SeedDesign, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """`decided` applied to many comparisons at once: for each row of `diffs` ((S, max) paired
    differences), the pairs it stops at and its p_seq there."""
    paths = sequential_paths(diffs, design)
    hit = paths < decision_level(design, rows)
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), paths.shape[1] - 1)
    return design.looks[first], paths[np.arange(len(paths)), first]


def nominal_levels(design: SeedDesign, level: float) -> np.ndarray:
    """The per-look t-test p below which p_seq < `level`: ``w_k * F^-1(level)``."""
    if not design.sequential:
        return np.array([level])
    null = _null_statistic(design.min, design.max)
    return design.weights * float(np.quantile(null, level))


def final_level(design: SeedDesign, level: float) -> float:
    """The nominal t-test level of the last look (the one an MDE at `max` pairs is computed for)."""
    return float(nominal_levels(design, level)[-1])
