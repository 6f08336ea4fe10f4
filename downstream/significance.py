"""Paired significance of a condition against the geometric-augmentation baseline, and the stars of Table B.

The paper names neither the test nor the star thresholds (docs/PAPER.md §B1); this project pairs runs by (fold, seed)
and uses a paired t-test by default (Wilcoxon signed-rank as an option), with the paper's four star levels (p below
0.05, 0.01, 0.001, 0.0001).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

TESTS: tuple[str, ...] = ("ttest", "wilcoxon")
TEST_DESCRIPTIONS: dict[str, str] = {
    "ttest": "paired two-sided t-test (scipy.stats.ttest_rel)",
    "wilcoxon": "two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon)",
}
# (upper bound, stars): a p-value strictly below the bound earns the stars; checked from the smallest bound up.
STAR_THRESHOLDS: tuple[tuple[float, str], ...] = ((1e-4, "****"), (1e-3, "***"), (1e-2, "**"), (5e-2, "*"))


@dataclass(frozen=True)
class PairedTest:
    """Outcome of one paired test.

    Attributes:
        test: "ttest" or "wilcoxon".
        n_pairs: number of paired runs used.
        statistic: the test statistic (NaN when not computed).
        p_value: two-sided p-value (NaN when not computed).
        note: why the p-value is NaN, or "" when it is a number.
    """

    test: str
    n_pairs: int
    statistic: float
    p_value: float
    note: str


def stars(p_value: float) -> str:
    """Stars of the paper's table: * < 0.05, ** < 0.01, *** < 0.001, **** < 0.0001, 'ns' otherwise, 'n/a' for NaN."""
    if math.isnan(p_value):
        return "n/a"
    for bound, mark in STAR_THRESHOLDS:
        if p_value < bound:
            return mark
    return "ns"


def paired_test(treatment: np.ndarray, baseline: np.ndarray, test: str = "ttest") -> PairedTest:
    """Two-sided paired test of `treatment` against `baseline` (entry i of both comes from the same fold and seed).

    Args:
        treatment: (R,) metric values of the condition.
        baseline: (R,) metric values of the baseline, same order.
        test: "ttest" (scipy.stats.ttest_rel) or "wilcoxon" (scipy.stats.wilcoxon, zero differences dropped).

    Returns:
        The test outcome; p-value NaN with a note for fewer than 2 pairs or when every difference is zero.
    """
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose from {TESTS}")
    a = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two (R,) arrays of one length; got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 2:
        return PairedTest(test, n, float("nan"), float("nan"), f"p-value needs at least 2 paired runs; got {n}")
    if np.all(a == b):
        return PairedTest(test, n, float("nan"), float("nan"), "every paired difference is zero")
    result = stats.ttest_rel(a, b) if test == "ttest" else stats.wilcoxon(a, b)
    return PairedTest(test, n, float(result.statistic), float(result.pvalue), "")
