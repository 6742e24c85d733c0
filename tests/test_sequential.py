"""Seeds added where undecided (`xvol_lab.study.sequential`): the false-positive rate under the
stopping rule, checked by simulating A/A studies with exactly that rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xvol_lab.study.sequential import (
    SeedDesign,
    decided,
    decision_level,
    nominal_levels,
    sequential_p,
    stop_looks,
)
from xvol_lab.study.stats import holm, t_test_p

STUDIES = 2000
ROWS = 5  # configurations compared with one shared baseline (controls included)
DESIGN = SeedDesign(3, 10)


def simulate(design: SeedDesign, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`STUDIES` simulated ablations: a baseline trained with design.max seeds and `ROWS`
    configurations each `shift` sd better, stopped by the study's rule; (p_seq, pairs) per row."""
    rng = np.random.default_rng(seed)
    baseline = rng.standard_normal((STUDIES, design.max))
    ps, ns = [], []
    for _ in range(ROWS):
        rows = rng.standard_normal((STUDIES, design.max)) + shift
        n, p = stop_looks(rows - baseline, design, ROWS)
        ps.append(p)
        ns.append(n)
    return np.array(ps).T, np.array(ns).T


def test_aa_studies_keep_the_false_positive_rate_under_optional_stopping():
    p, n = simulate(DESIGN, 0.0, seed=1)
    per_comparison = float(np.mean(p < 0.05))
    family = float(np.mean([min(holm(list(row))) < 0.05 for row in p]))
    assert per_comparison <= 0.06 and family <= 0.06
    assert per_comparison >= 0.02  # not trivially conservative
    assert n.min() == 3 and n.max() == 10  # some rows stop early, most run to the maximum


def test_the_naive_rule_the_design_replaces_would_fail_the_same_check():
    """Stopping at the first look whose plain t-test p < 0.05 inflates the false positives: the
    A/A check above can fail."""
    rng = np.random.default_rng(2)
    diffs = rng.standard_normal((STUDIES, 10)) - rng.standard_normal((STUDIES, 10))
    rejected = [any(t_test_p(list(row[:k])) < 0.05 for k in range(3, 11)) for row in diffs]
    assert np.mean(rejected) > 0.10


def test_a_real_effect_is_detected_and_stops_early():
    p, n = simulate(DESIGN, 3.0, seed=3)  # differences of mean 3, sd sqrt(2)
    assert np.mean(p < decision_level(DESIGN, ROWS)) > 0.95
    assert np.median(n) < 10


def test_one_look_is_the_paired_t_test():
    design = SeedDesign(4, 4)
    diffs = [0.02, 0.03, 0.04, 0.01]
    assert sequential_p(diffs, design) == pytest.approx(t_test_p(diffs), rel=1e-12)
    assert nominal_levels(design, 0.05).tolist() == [0.05]


def test_nominal_levels_spend_little_early_and_most_at_the_last_look():
    levels = nominal_levels(DESIGN, 0.05)
    assert len(levels) == 8 and np.all(np.diff(levels) > 0)
    assert levels[0] == pytest.approx(0.0023, abs=3e-4) and levels[-1] == pytest.approx(0.0256, abs=1e-3)
    # the p_seq of a comparison at exactly the last look's nominal level is alpha
    assert levels[-1] * (3 / 10) ** 2 == pytest.approx(levels[0], rel=1e-9)


def test_decided_stops_on_a_clear_difference_and_continues_otherwise():
    clear = [1.00, 1.01, 0.99]  # t = 173 with 3 pairs
    assert decided(clear, DESIGN, rows=4)
    assert sequential_p(clear, DESIGN) < 0.05 / 4
    unclear = [0.1, -0.2, 0.15, 0.0]
    assert not decided(unclear, DESIGN, rows=4)
    assert decided(unclear * 3, DESIGN, rows=4)  # 12 pairs: past the maximum, nothing left to add
    assert math.isnan(sequential_p([0.1, 0.2], DESIGN))  # before the first look


def test_design_rejects_bad_seed_ranges():
    with pytest.raises(ValueError, match="min 5, max 3"):
        SeedDesign(5, 3)
    with pytest.raises(ValueError, match="at least 2"):
        SeedDesign(1, 4)
    assert not SeedDesign(1, 1).sequential
