"""Drift of current feature values against the training snapshot's profile.

Pure functions. PSI (population stability index) for every feature, with scipy's
two-sample KS test for numeric features (against the profile's 101 stored quantiles)
and the chi-square test of homogeneity for categorical ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from copml.profiles import bin_shares

_EPS = 1e-4


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift in a window: PSI against the training profile, and the p-value of
    the two-sample ``test`` (``ks`` numeric, ``chi2`` categorical); NaN without data."""

    psi: float
    p_value: float
    test: str
    drifted: bool = False

    @classmethod
    def stored(cls, found: dict[str, Any]) -> FeatureDrift:
        """From a stored window's JSON, where NaN was written as null."""
        return cls(
            psi=math.nan if found.get("psi") is None else float(found["psi"]),
            p_value=math.nan if found.get("p_value") is None else float(found["p_value"]),
            test=str(found.get("test", "")),
            drifted=bool(found.get("drifted", False)),
        )


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two share vectors (bins with no mass smoothed)."""
    e = np.clip(np.asarray(expected, dtype=float), _EPS, None)
    a = np.clip(np.asarray(actual, dtype=float), _EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_drift(reference: dict[str, Any], values: pd.Series) -> FeatureDrift:
    from scipy.stats import ks_2samp

    current = values.dropna().to_numpy(dtype="float64")
    if len(current) == 0 or reference.get("count", 0) == 0:
        return FeatureDrift(math.nan, math.nan, "ks")
    shares = bin_shares(current, reference["bins"])
    p_value = float(ks_2samp(np.asarray(reference["quantiles"]), current).pvalue)
    return FeatureDrift(psi(reference["shares"], shares), p_value, "ks")


def categorical_drift(reference: dict[str, Any], values: pd.Series) -> FeatureDrift:
    from scipy.stats import chi2_contingency

    current = values.value_counts(dropna=True)  # on Categorical columns this is cheap
    current.index = current.index.astype(str)
    if current.sum() == 0 or reference.get("count", 0) == 0:
        return FeatureDrift(math.nan, math.nan, "chi2")
    categories = sorted(set(reference["counts"]) | set(current.index))
    ref = np.array([reference["counts"].get(c, 0) for c in categories], dtype=float)
    cur = np.array([current.get(c, 0) for c in categories], dtype=float)
    table = np.vstack([ref, cur]) + 0.5  # continuity for categories one side never saw
    p_value = float(chi2_contingency(table)[1])
    return FeatureDrift(psi(ref / ref.sum(), cur / cur.sum()), p_value, "chi2")


def feature_drift(
    profile: dict[str, dict[str, Any]], frame: pd.DataFrame, features: list[str], threshold: float
) -> dict[str, FeatureDrift]:
    """Drift per feature; ``drifted`` when PSI exceeds ``threshold``."""
    out: dict[str, FeatureDrift] = {}
    for feature in features:
        reference = profile.get(feature)
        if reference is None or feature not in frame.columns:
            continue
        if reference["kind"] == "numeric":
            result = numeric_drift(reference, frame[feature])
        elif reference["kind"] == "categorical":
            result = categorical_drift(reference, frame[feature])
        else:
            continue
        drifted = bool(not math.isnan(result.psi) and result.psi > threshold)
        out[feature] = replace(result, drifted=drifted)
    return out


def drift_share(drift: dict[str, FeatureDrift]) -> float:
    """The share of features that drifted (the ``drift`` metric of policies)."""
    known = [d for d in drift.values() if not math.isnan(d.psi)]
    return sum(d.drifted for d in known) / len(known) if known else math.nan
