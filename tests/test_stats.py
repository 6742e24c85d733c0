"""Ablation statistics against numbers computed by hand from the textbook formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from xvol_lab.study.stats import (
    holm,
    mde,
    nonnegative_interval,
    paired,
    seeds_needed,
    sign_flip_p,
    significant,
    summary,
    t_power,
    t_test_p,
)


def t975_df2() -> float:
    """t(0.975, 2) from the closed form of the t CDF with 2 degrees of freedom,
    F(t) = 1/2 + t / (2 sqrt(2 + t^2)): t / sqrt(2 + t^2) = 0.95, so t^2 = 2 * 0.9025 / 0.0975."""
    return math.sqrt(2 * 0.9025 / 0.0975)


def test_t_interval_of_three_values_is_the_textbook_one():
    s = summary([0.5, 0.6, 0.7])
    assert s.n == 3 and s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1)
    half = t975_df2() * 0.1 / math.sqrt(3)
    assert half == pytest.approx(0.2484, abs=5e-5)
    assert (s.ci95_low, s.ci95_high) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-12)


def test_summary_drops_missing_values_and_has_no_interval_below_two():
    s = summary([0.4, None, math.nan, 0.8])
    assert s.n == 2 and s.mean == pytest.approx(0.6) and s.std == pytest.approx(math.sqrt(0.08))
    one = summary([0.7])
    assert one.n == 1 and one.mean == 0.7
    assert math.isnan(one.std) and math.isnan(one.ci95_low) and math.isnan(one.ci95_high)
    assert summary([]).n == 0 and math.isnan(summary([]).mean)


def test_paired_difference_t_test_and_interval_by_hand():
    # x - y by seed = 0.02, 0.03, 0.04 (seed 3 only in x: not paired)
    x = {0: 0.52, 1: 0.63, 2: 0.74, 3: 0.99}
    y = {0: 0.50, 1: 0.60, 2: 0.70}
    result = paired(x, y)
    assert result.n == 3 and result.diff == pytest.approx(0.03)
    t = 0.03 / (0.01 / math.sqrt(3))
    p_by_hand = 1 - t / math.sqrt(2 + t * t)  # two-sided, df = 2: 2 (1 - F(t))
    assert p_by_hand == pytest.approx(0.0351, abs=1e-4)
    assert result.p == pytest.approx(p_by_hand, rel=1e-9)
    half = t975_df2() * 0.01 / math.sqrt(3)
    assert (result.ci95_low, result.ci95_high) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-12)
    assert result.p_exact == pytest.approx(0.25)  # every difference positive: 2 of 8 patterns


def test_exact_sign_flip_p_for_three_and_five_pairs():
    assert sign_flip_p([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)
    # |sum| >= 0.4 for (+,+,+) 0.6, (+,-,+) 0.4, (-,+,-) -0.4, (-,-,-) -0.6: 4 of 8
    assert sign_flip_p([0.3, -0.1, 0.2]) == pytest.approx(4 / 8)
    assert sign_flip_p([0.01] * 5) == pytest.approx(2 / 32)  # the floor 2 / 2^n, above 0.05
    assert math.isnan(sign_flip_p([]))


def test_t_test_edge_cases():
    assert math.isnan(t_test_p([0.1]))
    assert t_test_p([0.0, 0.0, 0.0]) == 1.0
    assert t_test_p([0.02, 0.02, 0.02]) == 0.0
    assert math.isnan(paired({0: 0.5}, {1: 0.5}).p) and paired({0: 0.5}, {1: 0.5}).n == 0


def test_holm_by_hand_keeps_order_and_skips_missing():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    adjusted = holm([0.01, 0.04, math.nan, 0.03, 0.005])
    assert adjusted[:2] == pytest.approx([0.03, 0.06])
    assert math.isnan(adjusted[2])
    assert adjusted[3:] == pytest.approx([0.06, 0.02])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert [significant(p) for p in adjusted] == [True, False, False, False, True]


def test_seeds_needed_matches_the_textbook_sample_size():
    """G*Power / Cohen: a paired (one-sample) t-test needs 34 pairs to detect d_z = 0.5 with 80%
    power at two-sided alpha 0.05; 33 are not enough."""
    assert seeds_needed(1.0, 0.5) == 34
    assert seeds_needed(2.0, -1.0) == 34  # the sign of the effect does not matter; the scale cancels
    assert t_power(0.5 * math.sqrt(33), 33, 0.05) < 0.8 <= t_power(0.5 * math.sqrt(34), 34, 0.05)
    assert seeds_needed(0.0, 0.1) == 2 and seeds_needed(math.nan, 0.1) is None


def test_mde_has_80_percent_power_by_simulation():
    d = mde(1.0, 10)
    assert d == pytest.approx(0.996, abs=1e-3)
    rng = np.random.default_rng(0)
    x = rng.normal(d, 1.0, size=(100_000, 10))
    t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(10))
    assert np.mean(np.abs(t) > sps.t.ppf(0.975, 9)) == pytest.approx(0.8, abs=0.006)
    assert mde(0.02, 10) == pytest.approx(0.02 * d, rel=1e-9)  # linear in the spread
    assert mde(1.0, 10, alpha=0.01) > d  # a stricter level (Holm) needs a larger effect
    assert math.isnan(mde(1.0, 1)) and math.isnan(mde(0.0, 5))  # no spread: unknown, never 0


def test_interval_of_a_loss_never_goes_below_zero():
    losses = [0.001, 0.002, 0.4]
    s = summary(losses)
    assert s.ci95_low < 0  # the t interval would
    low, high = nonnegative_interval(losses)
    assert 0.001 <= low < s.mean < high <= 0.4
    assert nonnegative_interval([0.3, 0.3]) == (0.3, 0.3)
    assert all(math.isnan(v) for v in nonnegative_interval([0.3]))
