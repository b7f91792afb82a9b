"""Statistical effectiveness by task: each task's metric table and its pure metric functions.

A metric table names every metric a task reports and which way is better, so that the spec
can refuse a metric the task does not have, a threshold on the wrong side (``rmse: {min: 1}``)
or a promotion metric that cannot be beaten, and the gate knows whether a gain is up or down.
A model kind hands its table over as data (:class:`MetricTable`); the built-in tasks' tables
are :data:`TABLES`.

The functions are pure, over arrays. A metric that is undefined on the data at hand (recall
of a class that never occurs, R² of a constant truth) is NaN, which monitoring reports as
*unknown*, never as a pass or a fail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from copml.estimation import BINARY_ESTIMATED, MULTICLASS_ESTIMATED, REGRESSION_ESTIMATED

Direction = Literal["higher", "lower", "band"]
"""Which way a metric is better: ``higher`` takes a ``min``, ``lower`` a ``max``; ``band``
(a rate or a mean residual, good only near a target) takes either or both."""

CLASS_SEP = ".class="
"""Per-class metrics are named ``<family>.class=<label>``, e.g. ``recall.class=virus``."""


@dataclass(frozen=True)
class MetricTable:
    """The metrics of one task, each with its direction, and the default promotion metric.

    ``per_class`` lists families (``recall``) that exist once per class of the target
    (``recall.class=virus``). ``drift`` names what of the model's own output is watched for
    drift, as the policy metric ``drift.<name>``: every task's prediction (its score, class
    or value), and a regression's residual once the truth lands. ``estimated`` names the
    metrics the kind estimates before the truth lands (:mod:`copml.estimation`), as
    ``estimated_<name>``."""

    task: str
    metrics: Mapping[str, Direction]
    promotion: str
    per_class: Mapping[str, Direction] = field(default_factory=dict)
    drift: tuple[str, ...] = ("prediction",)
    estimated: tuple[str, ...] = ()

    def direction(self, name: str, classes: Sequence[object] = ()) -> Direction | None:
        """The direction of ``name``, or None when the task has no such metric (a per-class
        metric exists only for one of ``classes``)."""
        family, sep, label = name.partition(CLASS_SEP)
        if not sep:
            return self.metrics.get(name)
        if label not in {str(c) for c in classes}:
            return None
        return self.per_class.get(family)

    def names(self, classes: Sequence[object] = ()) -> list[str]:
        """Every metric name of the task, per-class ones spelt out for ``classes``."""
        per_class = [f"{family}{CLASS_SEP}{c}" for family in self.per_class for c in classes]
        return [*self.metrics, *per_class]

    def gain(self, name: str, new: float, old: float) -> float:
        """How much better ``new`` is than ``old`` (negative: worse), by the metric's
        direction; a band metric has no better side, so it cannot rank two models."""
        direction = self.metrics.get(name) or self.per_class.get(name.partition(CLASS_SEP)[0])
        if direction == "higher":
            return new - old
        if direction == "lower":
            return old - new
        raise ValueError(f"{name!r} has no better direction; it cannot compare two models")

    def extended(self, task: str, metrics: Mapping[str, Direction]) -> MetricTable:
        """This table with more metrics, for a kind that reports more than its base task
        (a binary decision made by two models, each with its own figures)."""
        return replace(self, task=task, metrics={**self.metrics, **metrics})


BINARY = MetricTable(
    "binary",
    {
        "accuracy": "higher",
        "precision": "higher",
        "recall": "higher",
        "specificity": "higher",
        "f1": "higher",
        "roc_auc": "higher",
        "positive_rate": "band",
    },
    promotion="roc_auc",
    estimated=BINARY_ESTIMATED,
)
MULTICLASS = MetricTable(
    "multiclass",
    {
        "accuracy": "higher",
        "balanced_accuracy": "higher",
        "f1_macro": "higher",
        "f1_weighted": "higher",
        "log_loss": "lower",
    },
    promotion="accuracy",
    per_class={"recall": "higher", "precision": "higher"},
    estimated=MULTICLASS_ESTIMATED,
)
REGRESSION = MetricTable(
    "regression",
    {"rmse": "lower", "mae": "lower", "mape": "lower", "r2": "higher", "bias": "band"},
    promotion="rmse",
    drift=("prediction", "residual"),
    estimated=REGRESSION_ESTIMATED,
)
TABLES: Mapping[str, MetricTable] = {t.task: t for t in (BINARY, MULTICLASS, REGRESSION)}


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


# ---------------------------------------------------------------------------------- binary


def classification_metrics(
    actual: np.ndarray, predicted: np.ndarray, score: np.ndarray
) -> dict[str, float]:
    """Accuracy, precision, recall, specificity, f1, ROC AUC and the confusion counts."""
    actual = np.asarray(actual, dtype=np.int8)
    score = np.asarray(score, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=bool)
    positive = actual == 1
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    tn = int(np.sum(~predicted & ~positive))
    n = tp + fp + fn + tn

    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision + recall > 0 and not math.isnan(precision + recall)
        else math.nan
    )
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": f1,
        "roc_auc": roc_auc(actual, score),
        "positive_rate": _ratio(tp + fp, n),
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "tn": float(tn),
    }


def roc_auc(actual: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney U), tied scores sharing their average rank; NaN when
    only one class is present. One sort and sums over runs of equal scores: a window of
    10,000,000 decisions in about a second (``scipy.stats.rankdata`` took four)."""
    positive = np.asarray(actual) == 1
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(score)
    ranked = score[order]
    starts = np.concatenate(([0], np.flatnonzero(ranked[1:] != ranked[:-1]) + 1))
    ends = np.append(starts[1:], len(ranked))
    average_rank = (starts + ends + 1) / 2.0  # ranks start + 1 ... end, 1-based
    positives = np.add.reduceat(positive[order].astype(np.int64), starts)
    rank_sum = float(np.dot(average_rank, positives))
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# ------------------------------------------------------------------------------ multiclass


def class_codes(labels: Sequence[object] | np.ndarray, classes: Sequence[object]) -> np.ndarray:
    """Each label's position in ``classes``, compared as text (a CSV's ``"3"`` is class 3);
    a label that is not a class is refused by name."""
    import pandas as pd

    texts = np.asarray(labels, dtype=object).astype(str)
    codes = pd.Index([str(c) for c in classes]).get_indexer(texts)
    if (codes < 0).any():
        unknown = sorted({str(t) for t in texts[codes < 0]})[:5]
        raise ValueError(f"labels {unknown} are not among the classes {list(classes)}")
    return codes


def confusion_matrix(
    actual: Sequence[object] | np.ndarray,
    predicted: Sequence[object] | np.ndarray,
    classes: Sequence[object],
) -> np.ndarray:
    """Counts of (actual, predicted) pairs: rows the truth, columns the prediction, both in
    the order of ``classes``."""
    k = len(classes)
    pairs = class_codes(actual, classes) * k + class_codes(predicted, classes)
    return np.bincount(pairs, minlength=k * k).reshape(k, k)


def multiclass_metrics(
    actual: Sequence[object] | np.ndarray,
    predicted: Sequence[object] | np.ndarray,
    classes: Sequence[object],
    proba: np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro and weighted F1, per-class recall and precision
    and, given per-class probabilities (columns in the order of ``classes``), log loss.

    Balanced accuracy averages the recall of the classes that occur; macro F1 the F1 of
    the classes that occur or are predicted (a class in neither has no F1)."""
    cm = confusion_matrix(actual, predicted, classes).astype(np.float64)
    hits, support, chosen = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, hits / support, np.nan)
        precision = np.where(chosen > 0, hits / chosen, np.nan)
        denominator = support + chosen
        f1 = np.where(denominator > 0, 2 * hits / denominator, np.nan)
    seen = ~np.isnan(f1)
    out = {
        "accuracy": _ratio(float(hits.sum()), float(cm.sum())),
        "balanced_accuracy": float(np.nanmean(recall)) if (support > 0).any() else math.nan,
        "f1_macro": float(f1[seen].mean()) if seen.any() else math.nan,
        "f1_weighted": _ratio(float(np.nansum(f1 * support)), float(support.sum())),
        "log_loss": math.nan if proba is None else log_loss(actual, proba, classes),
    }
    for i, c in enumerate(classes):
        out[f"recall{CLASS_SEP}{c}"] = float(recall[i])
        out[f"precision{CLASS_SEP}{c}"] = float(precision[i])
    return out


def log_loss(
    actual: Sequence[object] | np.ndarray, proba: np.ndarray, classes: Sequence[object]
) -> float:
    """Mean negative log-probability of the true class; probabilities are clipped away from
    0 and 1 by the float epsilon so that one confident mistake is large, not infinite."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(classes):
        raise ValueError(f"expected one probability column per class ({len(classes)})")
    if len(proba) == 0:
        return math.nan
    eps = np.finfo(np.float64).eps
    true = proba[np.arange(len(proba)), class_codes(actual, classes)]
    return float(-np.log(np.clip(true, eps, 1 - eps)).mean())


# ------------------------------------------------------------------------------ regression


def mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute percentage error as a fraction (0.1 is 10 %); refused when the truth
    has zeros, where a percentage of nothing has no meaning."""
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    zeros = int(np.sum(actual == 0))
    if zeros:
        raise ValueError(f"MAPE is undefined: the truth is 0 in {zeros} of {len(actual)} rows")
    if len(actual) == 0:
        return math.nan
    return float(np.mean(np.abs((actual - predicted) / actual)))


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, MAPE (NaN when the truth has zeros, see :func:`mape`), R² and bias.

    Bias is the mean residual, truth minus prediction: positive when the model predicts
    too low."""
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if len(actual) == 0:
        return dict.fromkeys(REGRESSION.metrics, math.nan)
    residual = actual - predicted
    total = float(np.sum((actual - actual.mean()) ** 2))
    try:
        percentage = mape(actual, predicted)
    except ValueError:
        percentage = math.nan
    return {
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "mae": float(np.mean(np.abs(residual))),
        "mape": percentage,
        "r2": 1 - float(np.sum(residual**2)) / total if total > 0 else math.nan,
        "bias": float(residual.mean()),
    }
