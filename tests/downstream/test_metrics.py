"""Multi-label metrics against scikit-learn and direct formulas, including labels without positives/negatives."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, recall_score, roc_auc_score

from downstream.metrics import (
    METRIC_NAMES,
    confusion_counts,
    f1_sen_spe,
    macro_average,
    mean_std,
    nan_mean,
    per_label_metrics,
    undefined_labels,
)

# Fixed 8 x 4 case. Label 0 and 1: ordinary; label 2: no positives; label 3: no negatives.
Y_TRUE = np.array(
    [
        [1, 0, 0, 1],
        [0, 1, 0, 1],
        [1, 1, 0, 1],
        [0, 0, 0, 1],
        [1, 0, 0, 1],
        [0, 1, 0, 1],
        [0, 0, 0, 1],
        [1, 0, 0, 1],
    ]
)
SCORES = np.array(
    [
        [0.9, 0.2, 0.7, 0.8],
        [0.4, 0.6, 0.1, 0.3],
        [0.55, 0.45, 0.2, 0.9],
        [0.6, 0.1, 0.3, 0.7],
        [0.3, 0.05, 0.4, 0.6],
        [0.2, 0.8, 0.6, 0.2],
        [0.1, 0.7, 0.2, 0.95],
        [0.8, 0.3, 0.1, 0.5],
    ]
)


def test_per_label_metrics_match_sklearn():
    pred = (SCORES >= 0.5).astype(int)
    got = per_label_metrics(Y_TRUE, SCORES, threshold=0.5)
    assert tuple(got) == METRIC_NAMES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sen = recall_score(Y_TRUE, pred, average=None, zero_division=np.nan)
        spe = recall_score(1 - Y_TRUE, 1 - pred, average=None, zero_division=np.nan)
        f1 = f1_score(Y_TRUE, pred, average=None, zero_division=np.nan)
    np.testing.assert_allclose(got["Sen"], sen, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["Spe"], spe, rtol=0, atol=1e-12)
    # Label 2 has no positives but false positives: F1 = 2TP / (2TP + FP + FN) = 0, as in sklearn.
    np.testing.assert_allclose(got["F1"], f1, rtol=0, atol=1e-12)
    assert got["F1"][2] == 0.0
    for k in (0, 1):
        assert got["AUC"][k] == pytest.approx(roc_auc_score(Y_TRUE[:, k], SCORES[:, k]), abs=1e-12)
        assert got["mAP"][k] == pytest.approx(average_precision_score(Y_TRUE[:, k], SCORES[:, k]), abs=1e-12)
    # No negatives: AP is defined (every threshold has precision 1), AUC is not.
    assert got["mAP"][3] == pytest.approx(1.0)
    assert np.isnan(got["AUC"][2]) and np.isnan(got["AUC"][3]) and np.isnan(got["mAP"][2])
    assert np.isnan(got["Sen"][2]) and np.isnan(got["Spe"][3])


def test_direct_counts_and_harmonic_mean():
    # Label 0 by hand: predictions 1,0,1,1,0,0,0,1 vs truth 1,0,1,0,1,0,0,1 -> TP 3, FP 1, TN 3, FN 1.
    counts = confusion_counts(Y_TRUE, SCORES >= 0.5)
    assert (counts["TP"][0], counts["FP"][0], counts["TN"][0], counts["FN"][0]) == (3, 1, 3, 1)
    got = per_label_metrics(Y_TRUE, SCORES)
    sen, spe = 3 / 4, 3 / 4
    assert got["F1 (sen/spe)"][0] == pytest.approx(2 * sen * spe / (sen + spe))
    # Undefined Sen or Spe propagates; Sen = Spe = 0 gives 0.
    np.testing.assert_array_equal(
        f1_sen_spe(np.array([0.0, np.nan, 1.0]), np.array([0.0, 0.5, np.nan])), [0, np.nan, np.nan]
    )


def test_macro_is_nan_mean_over_labels():
    per_label = per_label_metrics(Y_TRUE, SCORES)
    macro = macro_average(per_label)
    for name in METRIC_NAMES:
        assert macro[name] == pytest.approx(np.nanmean(per_label[name]), abs=1e-12)
    # Undefined AUC of labels 2 and 3 are excluded: the macro AUC is the mean of labels 0 and 1 only.
    assert macro["AUC"] == pytest.approx(per_label["AUC"][:2].mean())
    assert np.isnan(nan_mean(np.array([np.nan, np.nan])))


def test_threshold_is_inclusive():
    got = per_label_metrics(np.array([[1, 0], [0, 1]]), np.array([[0.5, 0.49], [0.2, 0.5]]), threshold=0.5)
    np.testing.assert_array_equal(got["Sen"], [1.0, 1.0])


def test_undefined_labels_and_input_checks():
    assert undefined_labels(Y_TRUE, ["a", "b", "c", "d"]) == {"no_positives": ["c"], "no_negatives": ["d"]}
    with pytest.raises(ValueError, match="0/1"):
        per_label_metrics(np.array([[2, 0]]), np.array([[0.1, 0.2]]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        per_label_metrics(np.ones((3, 2)), np.ones((3, 3)))


def test_mean_std_uses_sample_std():
    mean, std = mean_std(np.array([0.5, 0.7, np.nan, 0.9]))
    assert mean == pytest.approx(0.7) and std == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert np.isnan(mean_std(np.array([0.3]))[1])
