"""Multi-label classification metrics of the paper's Table B (docs/PAPER.md §B1, §B1.1), per label then macro over
labels.

Every metric is first computed for each label (one-vs-rest) and then averaged over labels without weights
(docs/PAPER.md §B1.1: the reported F1 (sen/spe) is only reproducible that way). A metric that is undefined for a label
in the evaluated split is NaN for that label and left out of the macro mean:

| metric | definition for one label | undefined (NaN) when |
|---|---|---|
| Sen | TP / (TP + FN) | the label has no positives |
| Spe | TN / (TN + FP) | the label has no negatives |
| F1 | 2 TP / (2 TP + FP + FN) (precision/recall F1) | no positives and no predicted positives |
| F1 (sen/spe) | 2 Sen Spe / (Sen + Spe), 0 when Sen = Spe = 0 | Sen or Spe is undefined |
| AUC | ROC-AUC of the scores (sklearn) | the label has no positives or no negatives |
| AP | average precision of the scores (sklearn) | the label has no positives |

A prediction is positive when its score is >= the threshold (0.5 on sigmoid probabilities, docs/PAPER.md §B1).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

# Column names of the paper's Table B, in its order (docs/PAPER.md §B2).
METRIC_NAMES: tuple[str, ...] = ("Sen", "Spe", "AUC", "F1", "F1 (sen/spe)", "mAP")


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != scores.shape:
        raise ValueError(f"y_true and scores must both be (N, K); got {y_true.shape} and {scores.shape}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0/1 values")
    return y_true.astype(bool), scores


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0 (no warning)."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest confusion counts per label.

    Args:
        y_true: (N, K) 0/1 ground truth.
        y_pred: (N, K) 0/1 (or bool) predictions.

    Returns:
        {"TP", "FP", "TN", "FN"}: each a (K,) int64 array.
    """
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    return {
        "TP": (t & p).sum(0).astype(np.int64),
        "FP": (~t & p).sum(0).astype(np.int64),
        "TN": (~t & ~p).sum(0).astype(np.int64),
        "FN": (t & ~p).sum(0).astype(np.int64),
    }


def sensitivity(counts: dict[str, np.ndarray]) -> np.ndarray:
    """Sen = TP / (TP + FN) per label, (K,); NaN for a label without positives."""
    return _ratio(counts["TP"], counts["TP"] + counts["FN"])


def specificity(counts: dict[str, np.ndarray]) -> np.ndarray:
    """Spe = TN / (TN + FP) per label, (K,); NaN for a label without negatives."""
    return _ratio(counts["TN"], counts["TN"] + counts["FP"])


def f1_precision_recall(counts: dict[str, np.ndarray]) -> np.ndarray:
    """Precision/recall F1 = 2 TP / (2 TP + FP + FN) per label, (K,); NaN when TP = FP = FN = 0."""
    return _ratio(2 * counts["TP"], 2 * counts["TP"] + counts["FP"] + counts["FN"])


def f1_sen_spe(sen: np.ndarray, spe: np.ndarray) -> np.ndarray:
    """Harmonic mean of sensitivity and specificity per label (FDDM's "F1 (sen/spe)", docs/PAPER.md §B1).

    Args:
        sen: (K,) sensitivities (NaN allowed).
        spe: (K,) specificities (NaN allowed).

    Returns:
        (K,) 2 Sen Spe / (Sen + Spe); 0 where Sen = Spe = 0; NaN where either input is NaN.
    """
    sen = np.asarray(sen, dtype=np.float64)
    spe = np.asarray(spe, dtype=np.float64)
    total = sen + spe
    out = np.where(np.isnan(total), np.nan, 0.0)
    np.divide(2 * sen * spe, total, out=out, where=total > 0)
    return out


def roc_auc_per_label(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC per label, (K,); NaN for a label whose ground truth has only one class.

    Args:
        y_true: (N, K) 0/1 ground truth.
        scores: (N, K) real-valued scores (probabilities or logits).
    """
    t, s = _check(y_true, scores)
    out = np.full(t.shape[1], np.nan)
    for k in range(t.shape[1]):
        if 0 < t[:, k].sum() < len(t):
            out[k] = roc_auc_score(t[:, k], s[:, k])
    return out


def average_precision_per_label(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's step-wise definition) per label, (K,); NaN for a label without positives.

    Args:
        y_true: (N, K) 0/1 ground truth.
        scores: (N, K) real-valued scores.
    """
    t, s = _check(y_true, scores)
    out = np.full(t.shape[1], np.nan)
    for k in range(t.shape[1]):
        if t[:, k].any():
            out[k] = average_precision_score(t[:, k], s[:, k])
    return out


def per_label_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """All metrics of Table B for each label (mAP's per-label entry is the label's AP).

    Args:
        y_true: (N, K) 0/1 ground truth.
        scores: (N, K) sigmoid probabilities.
        threshold: a score >= threshold is a positive prediction.

    Returns:
        {name: (K,) float64 array} for every name in METRIC_NAMES, NaN where undefined (see module docstring).
    """
    t, s = _check(y_true, scores)
    counts = confusion_counts(t, s >= threshold)
    sen, spe = sensitivity(counts), specificity(counts)
    return {
        "Sen": sen,
        "Spe": spe,
        "AUC": roc_auc_per_label(t, s),
        "F1": f1_precision_recall(counts),
        "F1 (sen/spe)": f1_sen_spe(sen, spe),
        "mAP": average_precision_per_label(t, s),
    }


def nan_mean(values: np.ndarray) -> float:
    """Unweighted mean over the finite entries of a (K,) array; NaN (without a warning) when none is finite."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def macro_average(per_label: dict[str, np.ndarray]) -> dict[str, float]:
    """Macro average over labels of every per-label metric, undefined labels excluded (docs/PAPER.md §B1.1)."""
    return {name: nan_mean(values) for name, values in per_label.items()}


def undefined_labels(y_true: np.ndarray, label_names: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """Labels of an evaluation split for which some metrics are undefined, for the caller to warn about.

    Args:
        y_true: (N, K) 0/1 ground truth.
        label_names: the K label names.

    Returns:
        {"no_positives": [...], "no_negatives": [...]} label names.
    """
    t = np.asarray(y_true).astype(bool)
    return {
        "no_positives": [name for name, pos in zip(label_names, t.any(0)) if not pos],
        "no_negatives": [name for name, neg in zip(label_names, (~t).any(0)) if not neg],
    }


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of run-level values, NaNs dropped; std NaN for < 2 values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    if values.size == 1:
        return float(values[0]), float("nan")
    return float(values.mean()), float(values.std(ddof=1))
