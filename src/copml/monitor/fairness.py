"""Fairness of a model's predictions across groups of sensitive features, per monitoring window.

A model can be accurate overall yet treat one group worse than another; these figures let a
policy state how far apart groups may be (``demographic_parity_difference.gender <= 0.1``).

Flat metric names, for each sensitive column ``c``:

- ``demographic_parity_difference.<c>``: fairlearn's largest gap in selection rate between
  groups, over all predictions in the window.
- ``equalized_odds_difference.<c>``: fairlearn's largest gap in true- or false-positive rate
  between groups, over the rows that have ground truth (``actual`` not NaN).
- ``selection_rate.<c>=<group>``: share of predictions labelled 1 in that group.
- ``recall.<c>=<group>``: share of actual positives predicted 1 in that group (labelled rows).

``<group>`` is the value's text as is (``Female``, ``0``); a float with an integral value is
written as an integer, so ``SeniorCitizen=1`` keeps its name in a window where missing values
turned the column into floats. Rows whose sensitive value is missing belong to no group.

A figure the data cannot support is NaN (reported as *unknown*), never 0 and never an error:
no labelled rows, a column absent from the frame, a single group, a group without actual
positives (recall; and equalized odds, whose rates need positives and negatives in every group).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

DIFFERENCES = ("demographic_parity_difference", "equalized_odds_difference")


def metric_names(sensitive: list[str]) -> list[str]:
    """The difference metrics a policy condition may name, two per sensitive column."""
    return [f"{metric}.{column}" for column in sensitive for metric in DIFFERENCES]


def _group_text(value: Any) -> str:
    """Stable group text: ``1.0`` and ``1`` name the same group, whatever the column's dtype."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _groups(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Group code per row (-1: missing, no group) and each code's text. Texts are made per
    distinct value, not per row: a window of millions of rows has a handful of groups."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    texts, inverse = np.unique([_group_text(v) for v in uniques] or [""], return_inverse=True)
    lookup = np.append(np.asarray(inverse, dtype=np.int64)[: len(uniques)], -1)
    return lookup[codes], [str(t) for t in texts]


def _binary(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A 0/1 column as floats, NaN where absent or unknown."""
    if column not in frame.columns:
        return np.full(len(frame), math.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64")


def _collapsed(**columns: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One row per distinct combination of ``columns`` and how many rows have it. Codes
    (small non-negative integers: groups, 0/1 labels) are counted in one pass, 10,000,000
    rows in a tenth of a second; anything else is grouped by pandas."""
    values = list(columns.values())
    small = all(np.issubdtype(v.dtype, np.integer) for v in values) and len(values[0])
    if small and all(v.min() >= 0 for v in values):
        shape = tuple(int(v.max()) + 1 for v in values)
        if math.prod(shape) <= 1_000_000:
            counts = np.bincount(np.ravel_multi_index(values, shape), minlength=math.prod(shape))
            seen = np.flatnonzero(counts)
            found = np.unravel_index(seen, shape)
            return dict(zip(columns, found, strict=True)), counts[seen].astype("float64")
    counts = pd.DataFrame(columns).value_counts(sort=False)
    index = counts.index.to_frame(index=False)
    return {name: index[name].to_numpy() for name in columns}, counts.to_numpy("float64")


def _column(
    codes: np.ndarray, names: list[str], label: np.ndarray, actual: np.ndarray
) -> tuple[float, float, dict[str, dict[str, float]]]:
    """Differences and per-group figures for one sensitive column (rows with a group only).

    fairlearn computes every figure, on the rows collapsed to one row per distinct (group,
    label[, actual]) weighted by its count: the same rates exactly (counts are exact in
    floating point), at the cost of a handful of rows instead of millions (fairlearn stacks
    its inputs element by element: a minute for 1,000,000 rows).
    """
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        equalized_odds_difference,
        selection_rate,
    )
    from sklearn.metrics import recall_score

    dp = eo = math.nan
    text = np.asarray(names, dtype=object)
    n = np.bincount(codes, minlength=len(names))
    detail: dict[str, dict[str, float]] = {
        names[g]: {
            "n": float(n[g]),
            "selection_rate": math.nan,
            "recall": math.nan,
            "labelled": 0.0,
            "positives": 0.0,
        }
        for g in np.flatnonzero(n)
    }
    if detail:
        rows, weight = _collapsed(group=codes, label=label.astype(np.int64))
        y_pred, groups = rows["label"], text[rows["group"]]
        rates = MetricFrame(
            metrics={"selection_rate": selection_rate},
            y_true=y_pred,
            y_pred=y_pred,
            sensitive_features=groups,
            sample_params={"selection_rate": {"sample_weight": weight}},
        ).by_group["selection_rate"]
        for g, rate in rates.items():
            detail[str(g)]["selection_rate"] = float(rate)
        if len(detail) > 1:
            dp = float(
                demographic_parity_difference(
                    y_pred, y_pred, sensitive_features=groups, sample_weight=weight
                )
            )

    known = ~np.isnan(actual)
    if known.any():
        rows, weight = _collapsed(
            group=codes[known],
            actual=actual[known].astype(np.int64),
            label=label[known].astype(np.int64),
        )
        y_true, y_pred, sens = rows["actual"], rows["label"], text[rows["group"]]
        recalls = MetricFrame(
            metrics={"recall": partial(recall_score, zero_division=np.nan)},
            y_true=y_true,
            y_pred=y_pred,
            sensitive_features=sens,
            sample_params={"recall": {"sample_weight": weight}},
        ).by_group["recall"]
        for g, value in recalls.items():
            detail[str(g)]["recall"] = float(value)
        labelled = sorted(set(sens.tolist()))
        for g in labelled:
            in_group = sens == g
            detail[g]["labelled"] = float(weight[in_group].sum())
            detail[g]["positives"] = float(weight[in_group & (y_true == 1)].sum())
        # Rates need both classes in every group; otherwise fairlearn would count a missing
        # rate as 0 and report a gap that the data does not show.
        defined = all(0 < detail[g]["positives"] < detail[g]["labelled"] for g in labelled)
        if len(labelled) > 1 and defined:
            eo = float(
                equalized_odds_difference(
                    y_true, y_pred, sensitive_features=sens, sample_weight=weight
                )
            )

    return dp, eo, detail


def fairness(frame: pd.DataFrame, sensitive: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """Fairness figures of one window: (flat metrics named as in the module doc, detail).

    Detail maps each sensitive column to its groups, each with ``n`` (predictions),
    ``selection_rate``, ``recall``, ``labelled`` (rows with ground truth) and ``positives``
    (actual positives among them). An absent column has no groups.
    """
    label = _binary(frame, "label")
    actual = _binary(frame, "actual")
    metrics: dict[str, float] = {}
    detail: dict[str, Any] = {}
    for column in sensitive:
        metrics[f"demographic_parity_difference.{column}"] = math.nan
        metrics[f"equalized_odds_difference.{column}"] = math.nan
        detail[column] = {}
        if column not in frame.columns:
            continue
        codes, names = _groups(frame[column])
        rows = (codes >= 0) & ~np.isnan(label)
        dp, eo, groups_detail = _column(codes[rows], names, label[rows], actual[rows])
        metrics[f"demographic_parity_difference.{column}"] = dp
        metrics[f"equalized_odds_difference.{column}"] = eo
        for group, figures in groups_detail.items():
            metrics[f"selection_rate.{column}={group}"] = figures["selection_rate"]
            metrics[f"recall.{column}={group}"] = figures["recall"]
        detail[column] = groups_detail
    return metrics, detail
