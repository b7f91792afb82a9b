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

A multiclass model's probabilities are calibrated the same way one class against the rest
(rows renormalised), and the expected confusion counts of each class give accuracy,
balanced accuracy and macro F1. A regression has no probability to calibrate: its
holdout's error is kept by decile of the prediction, and a window's MAE and RMSE are
expected from the bins its predictions fall in (a lookup table in place of NannyML's model
of the loss, small enough for the version's JSON).

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
MULTICLASS_ESTIMATED = ("accuracy", "balanced_accuracy", "f1_macro")
"""Named as the multiclass kind's realised figures, so that each is reconciled with its own:
balanced accuracy is the macro recall."""
REGRESSION_ESTIMATED = ("mae", "rmse")


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
    the sigmoid of ``a`` times the score's log-odds plus ``b``; a multiclass one's
    (``one_vs_rest``, ``scores`` one column per class) each column by its class's mapping,
    rows renormalised to sum 1."""
    scores = np.asarray(scores, dtype=np.float64)
    if calibration.get("method") == ONE_VS_REST:
        return _one_vs_rest(calibration["classes"], scores)
    if calibration.get("method") == "platt":
        with np.errstate(over="ignore"):  # a steep sigmoid (a separable class): exactly 0
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
    scores = np.asarray(scores, dtype=np.float64)
    out = np.empty(scores.shape, dtype=np.float64)  # a column per class for multiclass
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


def _band(name: str, value: float, se: float, top: float = 1.0) -> dict[str, float]:
    lower = max(0.0, value - Z * se) if math.isfinite(se) else math.nan
    upper = min(top, value + Z * se) if math.isfinite(se) else math.nan
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


# ------------------------------------------------------------------------------ multiclass

ONE_VS_REST = "one_vs_rest"


def _constant(rate: float) -> dict[str, Any]:
    """The mapping of a class that the holdout (or a resample of it) never or always shows:
    its rate, whatever the score."""
    return {"method": "isotonic", "x": [0.0, 1.0], "y": [rate, rate]}


def _class_fit(method: str, scores: np.ndarray, hit: np.ndarray) -> dict[str, Any]:
    if len(np.unique(hit)) < 2:
        return _constant(float(hit.mean()) if len(hit) else 0.0)
    return _FITS[method](scores, hit)


def _one_vs_rest(classes: Sequence[Mapping[str, Any]], scores: np.ndarray) -> np.ndarray:
    """Each class's column by its own mapping, rows renormalised to sum 1 (a row that every
    mapping sends to 0 keeps the model's own probabilities)."""
    if scores.ndim != 2 or scores.shape[1] != len(classes):
        raise ValueError(f"expected one probability column per class ({len(classes)})")
    out = np.column_stack([calibrate(c, scores[:, i]) for i, c in enumerate(classes)])
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.where(total > 0, total, 1.0), scores)


def fit_multiclass_calibration(
    probabilities: np.ndarray, actual: np.ndarray, predicted: np.ndarray, *, resamples: int = 100
) -> dict[str, Any] | None:
    """The mapping of each class's probability (``probabilities``: a column per class) to
    the probability that ``actual`` (class codes) is that class, one class against the
    rest as :func:`fit_calibration` does it (isotonic or Platt by cross-validation, per
    class), as JSON with the standard error the finite holdout leaves in each estimate
    (the spread over seeded bootstrap refits, on the holdout's own decisions
    ``predicted``; ``resamples`` shared by the classes, at least 20); None when the
    holdout has one class only. A class the holdout never shows maps to 0: nothing was
    learnt about it."""
    proba = np.asarray(probabilities, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted)
    if proba.ndim != 2:
        return None
    keep = np.isfinite(proba).all(axis=1) & np.isfinite(actual)
    proba, actual, predicted = proba[keep], actual[keep].astype(np.int64), predicted[keep]
    if len(np.unique(actual)) < 2:
        return None
    k = proba.shape[1]
    hits = [(actual == c).astype(np.float64) for c in range(k)]
    methods = [
        _chosen(proba[:, c], hits[c]) if len(np.unique(hits[c])) == 2 else "isotonic"
        for c in range(k)
    ]

    def fitted(rows: np.ndarray) -> dict[str, Any]:
        classes = [_class_fit(methods[c], proba[rows, c], hits[c][rows]) for c in range(k)]
        return {"method": ONE_VS_REST, "classes": classes}

    rng = np.random.default_rng(0)
    spread = []
    for _ in range(max(20, resamples // k)):  # k mappings a refit: the cost of binary's
        rows = rng.integers(0, len(proba), len(proba))
        found = multiclass_estimates(calibrate(fitted(rows), proba), predicted)
        spread.append([found[f"{ESTIMATED}{m}"] for m in MULTICLASS_ESTIMATED])
    se = np.nanstd(np.array(spread), axis=0, ddof=1) if len(spread) > 1 else []
    return {
        **fitted(np.arange(len(proba))),
        "rows": len(proba),
        "se": {m: float(v) for m, v in zip(MULTICLASS_ESTIMATED, se, strict=False)},
    }


def _multinomial_var(
    p: np.ndarray, chosen: np.ndarray, own: np.ndarray, other: np.ndarray
) -> float:
    """The delta method's variance of a figure whose gradient in a row's truth indicator
    of class c is ``own[c]`` where the row was decided c and ``other[c]`` where it was
    not, each row's truth one multinomial draw from its probabilities ``p``: the
    covariance of a row's indicators (diag(p) - p pᵀ) taken whole, rows independent."""
    g = np.where(chosen, own[None, :], other[None, :])
    return float(np.sum(p * g**2) - np.sum(np.sum(p * g, axis=1) ** 2))


def multiclass_estimates(
    probability: np.ndarray,
    predicted: np.ndarray,
    calibration_se: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Estimated accuracy, balanced accuracy (macro recall) and macro F1 of decisions
    ``predicted`` (class codes) whose truth is each class with ``probability`` (a column
    per class, rows summing to 1), from the expected confusion counts of each class one
    against the rest (as NannyML's multiclass CBPE), each with its band: the delta
    method's sampling error of one multinomial draw per row, and the calibration's own.
    A macro figure averages the classes the window expects to see (balanced accuracy:
    with an expected truth; macro F1: expected or decided), as the realised ones do."""
    p = np.asarray(probability, dtype=np.float64)
    n = len(p)
    if n == 0 or p.ndim != 2:
        return {k: math.nan for m in MULTICLASS_ESTIMATED for k in _band(m, math.nan, math.nan)}
    k = p.shape[1]
    chosen = np.asarray(predicted, dtype=np.int64)[:, None] == np.arange(k)[None, :]
    tp = (p * chosen).sum(axis=0)
    support = p.sum(axis=0)  # expected truths of each class
    fn = support - tp
    decided = chosen.sum(axis=0).astype(np.float64)
    zero = np.zeros(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        seen = support > 0
        recall_own = np.where(seen, fn / support**2, 0.0) / max(int(seen.sum()), 1)
        recall_other = np.where(seen, -tp / support**2, 0.0) / max(int(seen.sum()), 1)
        recall = float(np.mean(tp[seen] / support[seen])) if seen.any() else math.nan
        den = decided + support  # 2 TP + FP + FN
        either = den > 0
        f1_own = np.where(either, 2 * (decided + fn) / den**2, 0.0) / max(int(either.sum()), 1)
        f1_other = np.where(either, -2 * tp / den**2, 0.0) / max(int(either.sum()), 1)
        f1 = float(np.mean(2 * tp[either] / den[either])) if either.any() else math.nan
    sampling = {
        "accuracy": (float(tp.sum()) / n, _multinomial_var(p, chosen, zero + 1 / n, zero)),
        "balanced_accuracy": (recall, _multinomial_var(p, chosen, recall_own, recall_other)),
        "f1_macro": (f1, _multinomial_var(p, chosen, f1_own, f1_other)),
    }
    out: dict[str, float] = {}
    for m, (value, var) in sampling.items():
        own = (calibration_se or {}).get(m, 0.0)
        out |= _band(m, value, math.sqrt(max(var, 0.0) + own**2))
    return out


# ------------------------------------------------------------------------------ regression

BINNED_ERROR = "binned_error"
ROWS_PER_BIN = 20  # fewer bins than asked on a small holdout, so that each mean means something


def fit_error_bins(
    predicted: np.ndarray, actual: np.ndarray, *, bins: int = 10
) -> dict[str, Any] | None:
    """The holdout's error by the prediction's decile (``bins`` quantile bins, fewer when
    a bin would hold under 20 rows), as JSON: per bin its rows, mean absolute and mean
    squared error and their variances. A few numbers instead of NannyML's model of the
    loss: the error a prediction is expected to have is that of the holdout's predictions
    near it. None when the holdout has under two rows."""
    predicted = np.asarray(predicted, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    keep = np.isfinite(predicted) & np.isfinite(actual)
    predicted, actual = predicted[keep], actual[keep]
    if len(predicted) < 2:
        return None
    count = max(1, min(bins, len(predicted) // ROWS_PER_BIN))
    cuts = np.unique(np.quantile(predicted, np.linspace(0, 1, count + 1)[1:-1]))
    where = np.searchsorted(cuts, predicted, side="right")
    absolute = np.abs(actual - predicted)
    squared = (actual - predicted) ** 2
    figures: dict[str, list[float]] = {k: [] for k in ("counts", "mae", "mse", "abs_var", "sq_var")}
    for b in range(len(cuts) + 1):
        rows = where == b
        if rows.sum() < 2:  # an empty bin of tied cuts: the holdout's overall error
            rows = np.ones(len(predicted), dtype=bool)
        figures["counts"].append(float(rows.sum()))
        figures["mae"].append(float(absolute[rows].mean()))
        figures["mse"].append(float(squared[rows].mean()))
        figures["abs_var"].append(float(absolute[rows].var(ddof=1)))
        figures["sq_var"].append(float(squared[rows].var(ddof=1)))
    return {
        "method": BINNED_ERROR,
        "cuts": [float(c) for c in cuts],
        **figures,
        "rows": len(predicted),
    }


def binned_by_version(
    predicted: np.ndarray,
    versions: Any,
    calibrations: Mapping[str, Mapping[str, Any] | None],
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """Each row's bin (numbered across the versions that made the rows) by the error bins
    of its version, and every bin's figures; None when a row's version has none."""
    import pandas as pd

    codes = pd.Categorical(versions)
    predicted = np.asarray(predicted, dtype=np.float64)
    if (codes.codes < 0).any():
        return None
    group = np.empty(len(predicted), dtype=np.int64)
    figures: dict[str, list[float]] = {k: [] for k in ("counts", "mae", "mse", "abs_var", "sq_var")}
    for code in np.unique(codes.codes):
        calibration = calibrations.get(str(codes.categories[code]))
        if calibration is None or calibration.get("method") != BINNED_ERROR:
            return None
        rows = codes.codes == code
        offset = len(figures["mae"])
        group[rows] = offset + np.searchsorted(calibration["cuts"], predicted[rows], side="right")
        for k, values in figures.items():
            values.extend(calibration[k])
    return group, {k: np.asarray(v, dtype=np.float64) for k, v in figures.items()}


def regression_estimates(group: np.ndarray, bins: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Estimated MAE and RMSE of predictions in error bins ``group`` (see
    :func:`binned_by_version`): the mean of their bins' MAE, the root of the mean of their
    bins' MSE. The band holds the window's sampling error (each row's error a draw from its
    bin's spread) and the holdout's (each bin's mean known from its rows only); RMSE's by
    the delta method. Lower bounds at 0, no upper bound."""
    group = np.asarray(group, dtype=np.int64)
    n = len(group)
    if n == 0:
        return {k: math.nan for m in REGRESSION_ESTIMATED for k in _band(m, math.nan, math.nan)}
    w = np.bincount(group, minlength=len(bins["mae"])).astype(np.float64)
    counts = bins["counts"]

    def mean_and_var(mean: np.ndarray, var: np.ndarray) -> tuple[float, float]:
        sampling = float(np.dot(w, var))
        holdout = float(np.dot(w**2, var / counts))
        return float(np.dot(w, mean)) / n, (sampling + holdout) / n**2

    mae, mae_var = mean_and_var(bins["mae"], bins["abs_var"])
    mse, mse_var = mean_and_var(bins["mse"], bins["sq_var"])
    rmse = math.sqrt(mse)
    rmse_se = math.sqrt(mse_var) / (2 * rmse) if rmse > 0 else 0.0
    return {
        **_band("mae", mae, math.sqrt(mae_var), math.inf),
        **_band("rmse", rmse, rmse_se, math.inf),
    }


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
