"""Performance estimated before the truth lands, from calibrated scores (confidence-based
performance estimation, as NannyML's CBPE does it).

At training, a version's scores on its holdout are calibrated against the holdout's truth
(isotonic regression or Platt scaling, chosen by cross-validation); the fitted mapping is a
few numbers of JSON recorded with the version. In a window whose truth is late, each
logged decision's calibrated score is the probability that its truth is positive, so the
confusion matrix it will have is expected from the decisions already made: accuracy,
precision, recall and F1 follow from it, ROC AUC from the expected ROC curve. Each estimate
has a confidence band for the value the truth will show (the sampling error of a sum of
Bernoulli draws, Hanley and McNeil's for ROC AUC, and the calibration's own). When the
truth lands, the estimate on the same rows is reconciled with the realised value: a
realised value outside the band, by more than a tolerance, means the relation between
inputs and outcome has changed since training (a concept shift), not only the inputs.

The functions are pure, over arrays; NaN is *unknown* (a version without a calibration, an
empty window), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ESTIMATED = "estimated_"
"""An estimate is named ``estimated_<metric>``, its band ``estimated_<metric>.lower`` and
``.upper``; its gap to the realised value ``estimation_error.<metric>``."""
ERROR = "estimation_error."
CONCEPT_SHIFT = "concept_shift"
"""1 when a window's realised figures fall outside their estimates' bands (by more than
the spec's tolerance), 0 when all fall inside, NaN before any truth."""
Z = 1.96  # the band's half-width in standard errors (95 % for a normal sampling error)
BINARY_ESTIMATED = ("accuracy", "precision", "recall", "f1", "roc_auc")


def names(estimated: Sequence[str]) -> list[str]:
    """Every window figure of estimation for the metrics ``estimated``, as policies read
    them: the estimates, their bands, their errors and the concept-shift flag."""
    if not estimated:
        return []
    found = [f"{ESTIMATED}{m}{part}" for m in estimated for part in ("", ".lower", ".upper")]
    return [*found, *(f"{ERROR}{m}" for m in estimated), CONCEPT_SHIFT]


# ------------------------------------------------------------------------------ calibration


def fit_calibration(
    scores: np.ndarray, actual: np.ndarray, predicted: np.ndarray, *, resamples: int = 100
) -> dict[str, Any] | None:
    """The mapping of ``scores`` to the probability that ``actual`` is 1, as JSON, with the
    standard error that the finite holdout leaves in each estimate (``se``: the spread of
    the estimates of the holdout's own decisions ``predicted`` over mappings refitted on
    seeded bootstrap resamples of it); None when the holdout has one class only.

    The mapping is isotonic regression or Platt's sigmoid on the score's log-odds, which
    ever predicts the holdout better in a seeded 5-fold cross-validation (log loss): on a
    small holdout isotonic steps fit its luck (pools of certain 0s and 1s make every later
    window look more separable than it is); on a large one they follow any shape."""
    scores = np.asarray(scores, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=bool)
    keep = np.isfinite(scores) & np.isfinite(actual)
    scores, actual, predicted = scores[keep], actual[keep], predicted[keep]
    if len(np.unique(actual)) < 2:
        return None
    fit = _FITS[_chosen(scores, actual)]
    rng = np.random.default_rng(0)
    spread = []
    for _ in range(resamples):
        rows = rng.integers(0, len(scores), len(scores))
        if len(np.unique(actual[rows])) < 2:
            continue
        found = binary_estimates(calibrate(fit(scores[rows], actual[rows]), scores), predicted)
        spread.append([found[f"{ESTIMATED}{m}"] for m in BINARY_ESTIMATED])
    se = np.std(np.array(spread), axis=0, ddof=1) if len(spread) > 1 else []
    return {
        **fit(scores, actual),
        "rows": len(scores),
        "se": {m: float(v) for m, v in zip(BINARY_ESTIMATED, se, strict=False)},
    }


def _chosen(scores: np.ndarray, actual: np.ndarray) -> str:
    """The mapping with the lower cross-validated log loss on the holdout (isotonic when a
    class is too rare to fold)."""
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    if np.bincount(actual.astype(int)).min() < 5:
        return "isotonic"
    losses = dict.fromkeys(_FITS, 0.0)
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(scores, actual):
        for method, fit in _FITS.items():
            p = calibrate(fit(scores[train], actual[train]), scores[test])
            losses[method] += log_loss(actual[test], np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1])
    return min(losses, key=losses.__getitem__)


def _isotonic(scores: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, actual)
    return {
        "method": "isotonic",
        "x": [float(v) for v in fitted.X_thresholds_],
        "y": [float(v) for v in fitted.y_thresholds_],
    }


def _log_odds(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    return np.log(clipped / (1 - clipped))


def _platt(scores: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=1e6).fit(_log_odds(scores)[:, None], actual.astype(int))
    return {"method": "platt", "a": float(fitted.coef_[0, 0]), "b": float(fitted.intercept_[0])}


_FITS = {"isotonic": _isotonic, "platt": _platt}


def calibrate(calibration: Mapping[str, Any], scores: np.ndarray) -> np.ndarray:
    """The calibrated probabilities of ``scores``: isotonic ones linear between the knots
    and clipped at the ends (as scikit-learn's ``IsotonicRegression.predict``), Platt's
    the sigmoid of ``a`` times the score's log-odds plus ``b``."""
    scores = np.asarray(scores, dtype=np.float64)
    if calibration.get("method") == "platt":
        return 1 / (1 + np.exp(-(calibration["a"] * _log_odds(scores) + calibration["b"])))
    x = np.asarray(calibration["x"], dtype=np.float64)
    y = np.asarray(calibration["y"], dtype=np.float64)
    return np.interp(scores, x, y)


def calibrated_by_version(
    scores: np.ndarray,
    versions: Any,
    calibrations: Mapping[str, Mapping[str, Any] | None],
) -> tuple[np.ndarray, dict[str, float]] | None:
    """Each row's calibrated score by the calibration of the version that made it
    (``versions``: a pandas Categorical or Series of version names), and the calibrations'
    standard errors averaged by their share of the rows; None when a row's version has no
    calibration (registered before calibration was recorded)."""
    import pandas as pd

    codes = pd.Categorical(versions)
    out = np.empty(len(scores), dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    se: dict[str, float] = {}
    present, counts = np.unique(codes.codes, return_counts=True)
    if (present < 0).any():
        return None
    for code, count in zip(present, counts, strict=True):
        calibration = calibrations.get(str(codes.categories[code]))
        if calibration is None:
            return None
        rows = codes.codes == code
        out[rows] = calibrate(calibration, scores[rows])
        for m, value in (calibration.get("se") or {}).items():
            se[m] = se.get(m, 0.0) + value * count / len(scores)
    return out, se


# ---------------------------------------------------------------------------------- binary


def _band(name: str, value: float, se: float) -> dict[str, float]:
    lower = max(0.0, value - Z * se) if math.isfinite(se) else math.nan
    upper = min(1.0, value + Z * se) if math.isfinite(se) else math.nan
    return {
        f"{ESTIMATED}{name}": value,
        f"{ESTIMATED}{name}.lower": lower,
        f"{ESTIMATED}{name}.upper": upper,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def expected_roc_auc(probability: np.ndarray) -> float:
    """ROC AUC of the expected ROC curve: rows ranked by calibrated score (the model's own
    ranking, the calibration being monotonic), each counting ``p`` of a positive and
    ``1 - p`` of a negative. Rows of equal score lie on one straight segment, as ties do
    in the realised curve."""
    ranked = np.sort(probability)[::-1]
    tp = np.concatenate(([0.0], np.cumsum(ranked)))
    fp = np.concatenate(([0.0], np.cumsum(1.0 - ranked)))
    if tp[-1] <= 0 or fp[-1] <= 0:
        return math.nan
    tpr, fpr = tp / tp[-1], fp / fp[-1]
    return float(np.dot(np.diff(fpr), tpr[1:] + tpr[:-1]) / 2)  # the trapezoid rule


def _auc_se(auc: float, positives: float, negatives: float) -> float:
    """Hanley and McNeil's (1982) standard error of a ROC AUC over the given class counts."""
    if not math.isfinite(auc) or positives < 1 or negatives < 1:
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    return math.sqrt(max(var, 0.0) / (positives * negatives))


def binary_estimates(
    probability: np.ndarray,
    predicted: np.ndarray,
    calibration_se: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Estimated accuracy, precision, recall, F1 and ROC AUC of decisions ``predicted``
    (bool: decided positive) whose truth is positive with ``probability``, from the
    expected confusion matrix, each with its band: the Bernoulli variance of the cells
    (the delta method for the ratios) and the calibration's own ``calibration_se``."""
    p = np.asarray(probability, dtype=np.float64)
    chosen = np.asarray(predicted, dtype=bool)
    n = len(p)
    if n == 0:
        return {k: math.nan for m in BINARY_ESTIMATED for k in _band(m, math.nan, math.nan)}
    p_chosen, p_passed = p[chosen], p[~chosen]
    n_chosen = float(len(p_chosen))
    tp, fn = float(p_chosen.sum()), float(p_passed.sum())
    tn = float(len(p_passed)) - fn
    var_tp = float(np.dot(p_chosen, 1.0 - p_chosen))
    var_fn = float(np.dot(p_passed, 1.0 - p_passed))
    positives = tp + fn
    recall = _ratio(tp, positives)
    recall_var = _ratio(fn**2 * var_tp + tp**2 * var_fn, positives**4)
    f1_den = tp + n_chosen + fn  # 2 TP + FP + FN
    f1_var = _ratio(4 * (n_chosen + fn) ** 2 * var_tp + 4 * tp**2 * var_fn, f1_den**4)
    auc = expected_roc_auc(p)
    sampling = {
        "accuracy": ((tp + tn) / n, math.sqrt(var_tp + var_fn) / n),
        "precision": (_ratio(tp, n_chosen), _ratio(math.sqrt(var_tp), n_chosen)),
        "recall": (recall, math.sqrt(recall_var)),
        "f1": (_ratio(2 * tp, f1_den), math.sqrt(f1_var)),
        "roc_auc": (auc, _auc_se(auc, positives, n - positives)),
    }
    out: dict[str, float] = {}
    for m, (value, se) in sampling.items():
        own = (calibration_se or {}).get(m, 0.0)
        out |= _band(m, value, math.sqrt(se**2 + own**2))
    return out


# ---------------------------------------------------------------------------- reconciling


def reconcile(
    estimated: Mapping[str, float],
    realised: Mapping[str, float],
    metrics: Sequence[str],
    tolerance: float,
) -> dict[str, float]:
    """Each metric's estimation error (realised minus estimated, on the same rows) and the
    concept-shift flag: 1 when a realised value lies outside its estimate's band widened by
    ``tolerance`` (the calibration's own error, which the band does not hold); NaN for what
    cannot be compared."""
    out: dict[str, float] = {}
    outside: list[bool] = []
    for m in metrics:
        value, guess = realised.get(m, math.nan), estimated.get(f"{ESTIMATED}{m}", math.nan)
        out[f"{ERROR}{m}"] = value - guess if math.isfinite(value + guess) else math.nan
        lower = estimated.get(f"{ESTIMATED}{m}.lower", math.nan)
        upper = estimated.get(f"{ESTIMATED}{m}.upper", math.nan)
        if math.isfinite(value + lower + upper):
            outside.append(value < lower - tolerance or value > upper + tolerance)
    out[CONCEPT_SHIFT] = float(any(outside)) if outside else math.nan
    return out
