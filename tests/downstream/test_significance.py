"""Paired tests against scipy on fixed numbers, and the stars of the paper's table at their boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from downstream.significance import paired_test, stars

TREAT = np.array([0.71, 0.69, 0.74, 0.70, 0.73, 0.72])
BASE = np.array([0.68, 0.69, 0.70, 0.66, 0.71, 0.69])


def test_ttest_matches_scipy():
    got = paired_test(TREAT, BASE, "ttest")
    ref = stats.ttest_rel(TREAT, BASE)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert got.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert (got.n_pairs, got.note) == (6, "")


def test_wilcoxon_matches_scipy():
    got = paired_test(TREAT, BASE, "wilcoxon")
    ref = stats.wilcoxon(TREAT, BASE)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert got.test == "wilcoxon"


def test_too_few_pairs_and_degenerate_cases():
    one = paired_test(np.array([0.7]), np.array([0.6]))
    assert math.isnan(one.p_value) and "at least 2" in one.note
    # A pair with a NaN is dropped before testing.
    dropped = paired_test(np.array([0.7, np.nan, 0.85]), np.array([0.6, 0.5, 0.7]))
    assert dropped.n_pairs == 2
    same = paired_test(BASE, BASE)
    assert math.isnan(same.p_value) and "zero" in same.note
    with pytest.raises(ValueError, match="unknown test"):
        paired_test(TREAT, BASE, "anova")
    with pytest.raises(ValueError, match="paired values"):
        paired_test(TREAT, BASE[:3])


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.05, "ns"),
        (np.nextafter(0.05, 0), "*"),
        (0.01, "*"),
        (np.nextafter(0.01, 0), "**"),
        (0.001, "**"),
        (np.nextafter(0.001, 0), "***"),
        (0.0001, "***"),
        (np.nextafter(0.0001, 0), "****"),
        (0.0, "****"),
        (0.7, "ns"),
        (float("nan"), "n/a"),
    ],
)
def test_stars_boundaries(p, expected):
    assert stars(float(p)) == expected
