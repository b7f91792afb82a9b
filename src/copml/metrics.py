"""Statistical effectiveness of a binary classifier: pure functions over arrays."""

from __future__ import annotations

import math

import numpy as np


def classification_metrics(
    actual: np.ndarray, predicted: np.ndarray, score: np.ndarray
) -> dict[str, float]:
    """Accuracy, precision, recall, specificity, f1, ROC AUC and the confusion counts.

    A metric that is undefined on this data (e.g. recall with no positives) is NaN, which
    monitoring reports as *unknown*, never as a pass or a fail.
    """
    actual = np.asarray(actual, dtype=np.int8)
    score = np.asarray(score, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=bool)
    positive = actual == 1
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    tn = int(np.sum(~predicted & ~positive))
    n = tp + fp + fn + tn

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision + recall > 0 and not math.isnan(precision + recall)
        else math.nan
    )
    return {
        "accuracy": ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "specificity": ratio(tn, tn + fp),
        "f1": f1,
        "roc_auc": roc_auc(actual, score),
        "positive_rate": ratio(tp + fp, n),
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "tn": float(tn),
    }


def roc_auc(actual: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney U); NaN when only one class is present."""
    from scipy.stats import rankdata

    n_pos = int(np.sum(actual == 1))
    n_neg = len(actual) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[actual == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
