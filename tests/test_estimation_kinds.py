"""Performance estimated before the truth lands for the multiclass and regression kinds:
the estimators on seeded synthetic windows whose truth is known, with and without a
concept shift, and the calibration recorded at training and used by a monitored window on
scikit-learn's wine and diabetes data (the projects of ``test_tasks``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from copml import estimation, registry
from copml.kinds import kind_named
from copml.metrics import multiclass_metrics, regression_metrics
from copml.monitor.window import monitor
from test_tasks import (
    DIABETES,
    DIABETES_REQUIREMENTS,
    WINE,
    build,
    load_feedback_file,
    scored_file,
    spec_text,
)

TOLERANCE = 0.04  # the spec's default estimation_tolerance
CLASSES = [0, 1, 2, 3]


def _probabilities(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four classes of unequal size (class 0 the commonest), confident and not."""
    logits = rng.normal(size=(n, 4)) * 1.5 + np.array([0.8, 0.3, 0.0, -0.6])
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _drawn(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """A truth for each row, drawn from its probabilities."""
    return (rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)


# ------------------------------------------------------------------------------ multiclass


def test_true_class_probabilities_estimate_the_realised_figures_within_their_bands() -> None:
    """Probabilities that are the truth's: over 40 seeded windows of 2,000 rows each
    estimate is unbiased, within 0.01 of the realised figure on average, and its 95 % band
    holds the realised figure in at least 85 % of windows."""
    metrics = estimation.MULTICLASS_ESTIMATED
    errors: dict[str, list[float]] = {m: [] for m in metrics}
    inside: dict[str, list[bool]] = {m: [] for m in metrics}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        p = _probabilities(rng, 2000)
        actual, predicted = _drawn(rng, p), p.argmax(axis=1)
        found = estimation.multiclass_estimates(p, predicted)
        realised = multiclass_metrics(actual, predicted, CLASSES, p)
        for m in metrics:
            errors[m].append(realised[m] - found[f"estimated_{m}"])
            low, high = found[f"estimated_{m}.lower"], found[f"estimated_{m}.upper"]
            inside[m].append(low <= realised[m] <= high)
    for m in metrics:
        print(
            m,
            f"bias {np.mean(errors[m]):+.4f}",
            f"mean |error| {np.mean(np.abs(errors[m])):.4f}",
            f"inside {np.mean(inside[m]):.2f}",
        )
        assert abs(np.mean(errors[m])) < 0.005, m
        assert np.mean(np.abs(errors[m])) < 0.01, m
        assert np.mean(inside[m]) >= 0.85, m


def test_calibration_turns_distorted_class_probabilities_into_the_truths() -> None:
    """A model too sure of itself (probabilities squared, renormalised): read as they are
    they promise far more than the truth gives; calibrated one class against the rest on a
    holdout they estimate a new window within 0.03, and no concept shift is flagged. Truth
    that no longer follows the model (a third of the rows' classes moved on by one) is."""
    rng = np.random.default_rng(11)
    p = _probabilities(rng, 6000)
    actual = _drawn(rng, p)
    sure = p**2 / (p**2).sum(axis=1, keepdims=True)
    holdout, window = slice(0, 3000), slice(3000, None)
    calibration = estimation.fit_multiclass_calibration(
        sure[holdout], actual[holdout], sure[holdout].argmax(axis=1)
    )
    assert calibration is not None and calibration["method"] == "one_vs_rest"
    assert json.loads(json.dumps(calibration)) == calibration  # recorded as JSON
    assert set(calibration["se"]) == set(estimation.MULTICLASS_ESTIMATED)
    calibrated = estimation.calibrate(calibration, sure[window])
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    predicted = sure[window].argmax(axis=1)
    realised = multiclass_metrics(actual[window], predicted, CLASSES)
    found = estimation.multiclass_estimates(calibrated, predicted, calibration["se"])
    naive = estimation.multiclass_estimates(sure[window], predicted)
    for m in estimation.MULTICLASS_ESTIMATED:
        print(
            m,
            f"realised {realised[m]:.4f}",
            f"estimated {found[f'estimated_{m}']:.4f}",
            f"naive {naive[f'estimated_{m}']:.4f}",
        )
        assert abs(found[f"estimated_{m}"] - realised[m]) < 0.03, m
    assert naive["estimated_accuracy"] - realised["accuracy"] > 0.1
    metrics = list(estimation.MULTICLASS_ESTIMATED)
    assert estimation.reconcile(found, realised, metrics, TOLERANCE)["concept_shift"] == 0.0

    moved = actual[window].copy()
    rows = np.random.default_rng(12).random(len(moved)) < 1 / 3
    moved[rows] = (moved[rows] + 1) % 4
    shifted = multiclass_metrics(moved, predicted, CLASSES)
    flagged = estimation.reconcile(found, shifted, metrics, TOLERANCE)
    assert flagged["concept_shift"] == 1.0
    assert flagged["estimation_error.accuracy"] < -0.1


def test_a_class_the_holdout_never_shows_is_expected_never() -> None:
    rng = np.random.default_rng(4)
    p = _probabilities(rng, 400)
    drawn = _drawn(rng, p)
    actual = np.where(drawn == 3, 0, drawn)  # class 3 never happens
    calibration = estimation.fit_multiclass_calibration(p, actual, p.argmax(axis=1))
    assert calibration is not None
    calibrated = estimation.calibrate(calibration, p)
    assert np.all(calibrated[:, 3] == 0) and np.allclose(calibrated.sum(axis=1), 1.0)
    one_class = np.zeros(400, dtype=int)
    assert estimation.fit_multiclass_calibration(p, one_class, p.argmax(axis=1)) is None


def test_each_row_is_calibrated_by_its_version_and_an_uncalibrated_one_is_unknown() -> None:
    same = {"method": "isotonic", "x": [0.0, 1.0], "y": [0.0, 1.0]}
    flat = {"method": "isotonic", "x": [0.0, 1.0], "y": [0.5, 0.5]}
    versions = {
        "1": {"method": "one_vs_rest", "classes": [same, same], "se": {"accuracy": 0.02}},
        "2": {"method": "one_vs_rest", "classes": [flat, flat], "se": {"accuracy": 0.04}},
    }
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    found = estimation.calibrated_by_version(proba, ["1", "2", "1", "1"], versions)
    assert found is not None
    np.testing.assert_allclose(found[0], [[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.3, 0.7]])
    assert found[1] == {"accuracy": pytest.approx(0.025)}
    decided = pd.DataFrame(
        {"label": [0], "score": [0.9], "model_version": ["3"], "probabilities": [[0.9, 0.1]]}
    )
    assert kind_named("multiclass").estimate(None, decided, {"3": None}) == {}  # type: ignore[arg-type]
    assert kind_named("regression").estimate(None, decided, {"3": None}) == {}  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ regression


def _regression(rng: np.random.Generator, n: int, low: float = 0.0) -> tuple[np.ndarray, ...]:
    """Predictions 3x + 1 of x in [low, 10), the truth off by a normal error that grows
    with x (so the error depends on the prediction, as the bins assume)."""
    x = rng.uniform(low, 10, n)
    predicted = 3 * x + 1
    return predicted, predicted + rng.normal(0, 0.5 + 0.3 * x)


def _estimated(calibration: dict, predicted: np.ndarray) -> dict[str, float]:
    found = estimation.binned_by_version(predicted, ["1"] * len(predicted), {"1": calibration})
    assert found is not None
    return estimation.regression_estimates(*found)


def test_binned_errors_estimate_mae_and_rmse_of_windows_of_a_stable_error() -> None:
    """Error bins from a holdout of 2,000 rows: over 40 seeded windows of 1,000 rows each
    estimate is within 4 % of the realised figure on average and its band holds it in at
    least 85 % of windows; a window of only high predictions (larger errors) is estimated
    from its own bins, not the holdout's average."""
    calibration = estimation.fit_error_bins(*_regression(np.random.default_rng(0), 2000))
    assert calibration is not None and calibration["method"] == "binned_error"
    assert json.loads(json.dumps(calibration)) == calibration
    assert len(calibration["cuts"]) == 9 and sum(calibration["counts"]) == 2000
    relative: dict[str, list[float]] = {m: [] for m in estimation.REGRESSION_ESTIMATED}
    inside: dict[str, list[bool]] = {m: [] for m in estimation.REGRESSION_ESTIMATED}
    for seed in range(40):
        predicted, actual = _regression(np.random.default_rng(100 + seed), 1000)
        found = _estimated(calibration, predicted)
        realised = regression_metrics(actual, predicted)
        for m in estimation.REGRESSION_ESTIMATED:
            relative[m].append((realised[m] - found[f"estimated_{m}"]) / realised[m])
            low, high = found[f"estimated_{m}.lower"], found[f"estimated_{m}.upper"]
            inside[m].append(low <= realised[m] <= high)
    for m in estimation.REGRESSION_ESTIMATED:
        print(
            m,
            f"mean |relative error| {np.mean(np.abs(relative[m])):.4f}",
            f"inside {np.mean(inside[m]):.2f}",
        )
        assert np.mean(np.abs(relative[m])) < 0.04, m
        assert np.mean(inside[m]) >= 0.85, m

    predicted, actual = _regression(np.random.default_rng(7), 1000, low=7.0)
    found, realised = _estimated(calibration, predicted), regression_metrics(actual, predicted)
    overall = calibration["mae"]
    assert found["estimated_mae"] > max(overall) * 0.8 > np.mean(overall)
    assert abs(found["estimated_mae"] - realised["mae"]) / realised["mae"] < 0.05


def test_an_error_that_grew_is_flagged_as_a_concept_shift() -> None:
    """The same predictions, but the truth now strays twice as far: the estimate (from
    the holdout's bins) stays put and the realised MAE and RMSE leave its band."""
    calibration = estimation.fit_error_bins(*_regression(np.random.default_rng(0), 2000))
    assert calibration is not None
    rng = np.random.default_rng(8)
    predicted, actual = _regression(rng, 1000)
    found = _estimated(calibration, predicted)
    metrics = list(estimation.REGRESSION_ESTIMATED)
    realised = regression_metrics(actual, predicted)
    assert estimation.reconcile(found, realised, metrics, TOLERANCE)["concept_shift"] == 0.0
    doubled = regression_metrics(predicted + 2 * (actual - predicted), predicted)
    flagged = estimation.reconcile(found, doubled, metrics, TOLERANCE)
    assert flagged["concept_shift"] == 1.0
    assert flagged["estimation_error.mae"] > 0.5 * found["estimated_mae"]


def test_a_small_holdout_gets_fewer_bins_and_a_tiny_one_none() -> None:
    predicted, actual = _regression(np.random.default_rng(1), 70)
    calibration = estimation.fit_error_bins(predicted, actual)
    assert calibration is not None and len(calibration["counts"]) == 3  # 70 // 20
    assert estimation.fit_error_bins(predicted[:1], actual[:1]) is None


# -------------------------------------------------------------------- trained and monitored


def _monitored(root: Path, data, task: str, spec: str) -> None:  # type: ignore[no-untyped-def]
    """Train v1, score the rows that arrive later, monitor the window before and after
    their truth: each estimate is finite inside its band before, and reconciled after."""
    project = build(root, data, spec)
    calibration = registry.recorded(project, "1").calibration
    assert calibration is not None
    assert json.loads(json.dumps(calibration)) == calibration
    metrics = project.spec.metrics.estimated
    by_id = scored_file(project, data)
    early = monitor(project).metrics
    for m in metrics:
        low, value, high = (early[f"estimated_{m}{p}"] for p in (".lower", "", ".upper"))
        assert all(map(math.isfinite, (low, value, high))) and low <= value <= high, (m, early)
        assert math.isnan(early[m])
    labelled = pd.DataFrame(
        {"prediction_id": by_id["prediction_id"], "actual": data.truth(by_id.index).to_numpy()}
    )
    assert load_feedback_file(project, labelled, "truth.csv") == len(by_id)
    late = monitor(project).metrics
    for m in metrics:
        assert late[f"estimated_{m}"] == early[f"estimated_{m}"]  # same rows, same estimate
        error = late[f"estimation_error.{m}"]
        assert error == pytest.approx(late[m] - late[f"estimated_{m}"]), m
        band = (late[f"estimated_{m}.lower"], late[f"estimated_{m}.upper"])
        print(task, m, f"estimated {late[f'estimated_{m}']:.3f} {band}", f"realised {late[m]:.3f}")
    print(task, "concept_shift", late["concept_shift"])
    assert late["concept_shift"] in (0.0, 1.0)


def test_a_trained_multiclass_version_estimates_its_window(tmp_path: Path) -> None:
    """Two measurements only, so that the classes overlap and the estimate is not 1."""
    model = '  params: {features: "flavanoids,proline"}\n'
    spec = spec_text(WINE, "multiclass", model, "  accuracy: {min: 0.8}\n")
    _monitored(tmp_path / "wine", WINE, "multiclass", spec)


def test_a_trained_regression_version_estimates_its_window(tmp_path: Path) -> None:
    spec = spec_text(DIABETES, "regression", "", DIABETES_REQUIREMENTS)
    _monitored(tmp_path / "diabetes", DIABETES, "regression", spec)
