"""Per-column profiles of a snapshot: the reference that drift is measured against.

Pure functions over data frames. Numeric columns keep decile bin edges with their shares
(for PSI) and 101 quantiles (a compact sample for the KS test); categorical columns keep
their value counts (for PSI and the chi-square test).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

_MAX_CATEGORIES = 50
_N_QUANTILES = 101


def numeric_bins(values: np.ndarray) -> list[float]:
    """Decile edges of the reference, deduplicated; the outer bins are open-ended."""
    edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
    return [float(e) for e in edges]


def bin_shares(values: np.ndarray, edges: list[float]) -> list[float]:
    """Share of values in each of the ``len(edges) + 1`` open-ended bins."""
    if len(values) == 0:
        return [0.0] * (len(edges) + 1)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return (counts / len(values)).tolist()


def _numeric(series: pd.Series) -> dict[str, Any]:
    values = series.dropna().to_numpy(dtype="float64")
    if len(values) == 0:
        return {"kind": "numeric", "count": 0}
    edges = numeric_bins(values)
    return {
        "kind": "numeric",
        "count": len(values),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "bins": edges,
        "shares": bin_shares(values, edges),
        "quantiles": np.quantile(values, np.linspace(0, 1, _N_QUANTILES)).tolist(),
    }


def _categorical(series: pd.Series) -> dict[str, Any]:
    counts = series.dropna().astype(str).value_counts()
    kept = counts.head(_MAX_CATEGORIES)
    return {
        "kind": "categorical",
        "count": int(counts.sum()),
        "distinct": len(counts),
        "counts": {str(k): int(v) for k, v in kept.items()},
        "other": int(counts.iloc[_MAX_CATEGORIES:].sum()),
    }


def profile_column(series: pd.Series, kind: str) -> dict[str, Any]:
    """Profile one column; ``kind`` is ``numeric``, ``categorical`` or ``identifier``."""
    nulls = int(series.isna().sum())
    if kind == "numeric":
        body = _numeric(series)
    elif kind == "categorical":
        body = _categorical(series)
    else:
        body = {"kind": "identifier", "count": int(len(series) - nulls)}
    body["nulls"] = nulls
    return body


def profile(frame: pd.DataFrame, kinds: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Profiles of the columns named in ``kinds`` that are present in ``frame``."""
    return {c: profile_column(frame[c], k) for c, k in kinds.items() if c in frame.columns}
