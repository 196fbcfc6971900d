"""The one-sided Mann-Whitney U test the canary uses, against known values."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from ckptserve.rollout.ranktest import mann_whitney_less

MALES = [19, 22, 16, 29, 24]
FEMALES = [20, 11, 17, 12]


def test_matches_the_scipy_documentation_example():
    """scipy's mannwhitneyu example: U=17 for males vs females; the asymptotic two-sided
    p-value 0.11134688653314041 is twice the one-sided one."""
    greater = mann_whitney_less(FEMALES, MALES)  # are the females' values lower?
    assert greater.u == 20 - 17 == 3 and greater.mean == 10
    assert greater.p == pytest.approx(0.11134688653314041 / 2, rel=1e-12)
    assert mann_whitney_less(MALES, FEMALES).u == 17


def test_the_tie_corrected_variance_is_the_exact_variance_of_u_over_every_split():
    """With ties, sd^2 equals the variance of U over all C(8, 3) ways to split the pooled
    values (the permutation null distribution), and the mean equals its mean."""
    pooled = [1, 1, 2, 2, 2, 3, 4, 4]
    us = []
    for chosen in itertools.combinations(range(len(pooled)), 3):
        x = [pooled[i] for i in chosen]
        y = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        us.append(mann_whitney_less(x, y).u)
    test = mann_whitney_less([1, 2, 4], [1, 2, 2, 3, 4])
    assert statistics.fmean(us) == pytest.approx(test.mean)
    assert statistics.pvariance(us) == pytest.approx(test.sd**2, rel=1e-12)


def test_u_counts_pairs_where_x_is_greater_and_half_the_ties():
    """U is the number of (x, y) pairs with x > y, ties counting one half."""
    x, y = [1.0, 2.0, 2.0, 5.0], [2.0, 3.0, 0.5]
    pairs = sum((a > b) + 0.5 * (a == b) for a in x for b in y)
    assert mann_whitney_less(x, y).u == pairs


def test_clearly_lower_values_give_a_small_p_and_higher_ones_a_large_p():
    """One-sided: x below y is evidence (p near 0); x above y is none (p near 1)."""
    low, high = [float(v) for v in range(20)], [float(v) + 15 for v in range(20)]
    assert mann_whitney_less(low, high).p < 1e-4
    assert mann_whitney_less(high, low).p > 1 - 1e-4
    same = mann_whitney_less(low, list(low))
    assert same.z == pytest.approx(0.5 / same.sd) and same.p > 0.5


def test_all_values_tied_is_no_evidence():
    """No variation at all: sd 0, p 1 (never 'worse')."""
    test = mann_whitney_less([1.0] * 5, [1.0] * 7)
    assert (test.sd, test.z, test.p) == (0.0, 0.0, 1.0)


def test_an_empty_sample_is_refused():
    """Nothing to rank on one side: a caller's mistake (the canary waits for a minimum count)."""
    with pytest.raises(ValueError, match="both samples need values"):
        mann_whitney_less([], [1.0])


def test_p_is_the_normal_cdf_of_z():
    """p = Phi(z), z continuity-corrected toward the mean."""
    test = mann_whitney_less([3.0, 1.0, 4.0, 1.5], [5.0, 9.0, 2.0, 6.0, 5.5])
    assert test.z == pytest.approx((test.u - test.mean + 0.5) / test.sd)
    assert test.p == pytest.approx(0.5 * (1 + math.erf(test.z / math.sqrt(2))))
