"""Performance estimated before the truth lands: the estimator on data whose truth is known,
the calibration recorded with a trained version, and windows estimated, reconciled with
the truth when it lands, and acted on by policies."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from copml import estimation, registry
from copml.apps.churn.simulation import AFTER_SHIFT, Population, as_source_csv
from copml.feedback import load
from copml.kinds import kind_named
from copml.monitor.window import history, monitor
from copml.operate.runner import operate_once
from copml.project import Project, load_project
from copml.score import score

SCORED, OBSERVED = (datetime(2026, 3, d, tzinfo=UTC) for d in (1, 28))
END = datetime(2026, 4, 1, tzinfo=UTC)
METRICS = estimation.BINARY_ESTIMATED


def _realised(actual: np.ndarray, predicted: np.ndarray, score: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": accuracy_score(actual, predicted),
        "precision": precision_score(actual, predicted),
        "recall": recall_score(actual, predicted),
        "f1": f1_score(actual, predicted),
        "roc_auc": roc_auc_score(actual, score),
    }


def test_well_calibrated_scores_estimate_the_realised_figures_within_their_bands() -> None:
    """Scores that are the true probabilities: over 40 seeded windows each estimate is on
    average within a hundredth or two of the realised figure, and the 95 % band holds it in
    at least 85 % of windows (the band is the realised figure's sampling error)."""
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    inside: dict[str, list[bool]] = {m: [] for m in METRICS}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        p = rng.beta(1.2, 3.0, 3000)
        actual = (rng.random(len(p)) < p).astype(int)
        predicted = p >= 0.35
        found = estimation.binary_estimates(p, predicted)
        for m, value in _realised(actual, predicted, p).items():
            errors[m].append(value - found[f"estimated_{m}"])
            low, high = found[f"estimated_{m}.lower"], found[f"estimated_{m}.upper"]
            inside[m].append(low <= value <= high)
    for m in METRICS:
        assert abs(np.mean(errors[m])) < 0.005, m  # unbiased
        assert np.mean(np.abs(errors[m])) < (0.01 if m in ("accuracy", "roc_auc") else 0.02), m
        assert np.mean(inside[m]) >= 0.85, m


def test_calibration_turns_distorted_scores_into_probabilities() -> None:
    """A model whose scores are not probabilities (cubed): read as probabilities they
    mislead; calibrated on a holdout they estimate a new window's accuracy and ROC AUC."""
    rng = np.random.default_rng(3)
    p = rng.beta(1.5, 2.5, 8000)
    actual = (rng.random(len(p)) < p).astype(int)
    scores = p**3
    calibration = estimation.fit_calibration(scores[:4000], actual[:4000], scores[:4000] >= 0.2)
    assert calibration is not None
    assert json.loads(json.dumps(calibration)) == calibration  # recorded as JSON
    window, truth = scores[4000:], actual[4000:]
    predicted = window >= 0.2
    realised = _realised(truth, predicted, window)
    found = estimation.binary_estimates(estimation.calibrate(calibration, window), predicted)
    naive = estimation.binary_estimates(window, predicted)
    for m in ("accuracy", "roc_auc"):
        assert abs(found[f"estimated_{m}"] - realised[m]) < 0.02, m
    assert abs(naive["estimated_accuracy"] - realised["accuracy"]) > 0.1


def test_the_mapping_that_predicts_the_holdout_better_is_chosen() -> None:
    """Scores whose log-odds are linearly off (a class-weighted model): Platt's sigmoid is
    exact and chosen; outcomes that jump at one score: only isotonic steps follow."""
    rng = np.random.default_rng(5)
    p = rng.beta(1.2, 3.0, 1500)
    actual = (rng.random(len(p)) < p).astype(int)
    skewed = 1 / (1 + np.exp(-(2 * np.log(p / (1 - p)) + 1)))
    platt = estimation.fit_calibration(skewed, actual, skewed >= 0.5)
    assert platt is not None and platt["method"] == "platt"
    assert platt["a"] == pytest.approx(0.5, abs=0.1) and platt["b"] == pytest.approx(-0.5, abs=0.2)
    assert estimation.calibrate(platt, skewed) == pytest.approx(p, abs=0.05)
    score = rng.random(20000)
    jump = (rng.random(len(score)) < np.where(score < 0.5, 0.05, 0.95)).astype(int)
    steps = estimation.fit_calibration(score, jump, score >= 0.5)
    assert steps is not None and steps["method"] == "isotonic"


def test_a_holdout_of_one_class_calibrates_nothing() -> None:
    one_class = np.array([1, 1])
    assert estimation.fit_calibration(np.array([0.2, 0.7]), one_class, one_class == 1) is None


def test_the_expected_roc_curve_of_certain_and_of_uninformative_scores() -> None:
    assert estimation.expected_roc_auc(np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert estimation.expected_roc_auc(np.full(10, 0.3)) == pytest.approx(0.5)
    assert math.isnan(estimation.expected_roc_auc(np.zeros(5)))  # no positive expected


def test_each_row_is_calibrated_by_its_own_version_and_an_uncalibrated_one_is_unknown() -> None:
    up = {"x": [0.0, 1.0], "y": [0.0, 1.0], "se": {"accuracy": 0.03}}
    flat = {"x": [0.0, 1.0], "y": [0.5, 0.5], "se": {"accuracy": 0.06}}
    versions = pd.Categorical(["1", "2", "1"])
    found = estimation.calibrated_by_version(
        np.array([0.2, 0.2, 0.9]), versions, {"1": up, "2": flat}
    )
    assert found is not None and found[0].tolist() == pytest.approx([0.2, 0.5, 0.9])
    assert found[1] == {"accuracy": pytest.approx(0.04)}  # by their share of the rows
    assert estimation.calibrated_by_version(np.array([0.2]), ["3"], {"3": None}) is None
    decided = pd.DataFrame({"score": [0.2], "label": [0], "model_version": ["3"]})
    assert kind_named("binary").estimate(None, decided, {"3": None}) == {}  # type: ignore[arg-type]


def test_a_realised_figure_outside_the_widened_band_flags_a_concept_shift() -> None:
    estimate = {
        "estimated_accuracy": 0.80,
        "estimated_accuracy.lower": 0.78,
        "estimated_accuracy.upper": 0.82,
    }
    inside = estimation.reconcile(estimate, {"accuracy": 0.84}, ["accuracy"], 0.03)
    assert inside == {"estimation_error.accuracy": pytest.approx(0.04), "concept_shift": 0.0}
    outside = estimation.reconcile(estimate, {"accuracy": 0.70}, ["accuracy"], 0.03)
    assert outside["concept_shift"] == 1.0
    unknown = estimation.reconcile(estimate, {"accuracy": math.nan}, ["accuracy"], 0.03)
    assert math.isnan(unknown["estimation_error.accuracy"]) and math.isnan(unknown["concept_shift"])


# -------------------------------------------------------------------------------- a project


def _month(project: Project, folder: Path, population: Population) -> pd.DataFrame:
    """Score the population on 1 March; who churned (no retention offers)."""
    folder.mkdir(parents=True, exist_ok=True)
    batch = folder / "batch.csv"
    as_source_csv(population.customers).to_csv(batch, index=False)
    score(project, batch, folder / "scores.csv", at=SCORED.replace(hour=6))
    return population.close_month(np.zeros(len(population.customers), dtype=bool))


def _truth(project: Project, folder: Path, outcome: pd.DataFrame) -> None:
    outcome.to_csv(folder / "truth.csv", index=False)
    load(project, folder / "truth.csv", at=OBSERVED)


def test_a_trained_version_records_its_calibration(churn: Project) -> None:
    calibration = registry.recorded(churn, "1").calibration
    assert calibration is not None and calibration["method"] in ("isotonic", "platt")
    assert calibration["rows"] == round(len(pd.read_csv(churn.root / "data/customers.csv")) * 0.2)
    assert set(calibration["se"]) == set(METRICS)
    probabilities = estimation.calibrate(calibration, np.linspace(0, 1, 101))
    assert np.all(np.diff(probabilities) >= 0)  # the model's ranking kept


def test_a_window_is_estimated_before_its_truth_and_reconciled_when_it_lands(
    churn: Project, tmp_path: Path
) -> None:
    outcome = _month(churn, tmp_path, Population(seed=21, size=2000))
    early = monitor(churn, end=END).metrics
    assert math.isnan(early["accuracy"]) and math.isnan(early["concept_shift"])
    for m in METRICS:
        low, value, high = (early[f"estimated_{m}{p}"] for p in (".lower", "", ".upper"))
        assert 0 < low < value < high < 1, m
    _truth(churn, tmp_path, outcome)
    late = monitor(churn, end=END).metrics  # the same window, computed again
    for m in METRICS:
        assert late[f"estimated_{m}"] == early[f"estimated_{m}"]  # same rows, same estimate
        assert late[f"estimation_error.{m}"] == pytest.approx(late[m] - early[f"estimated_{m}"])
    assert abs(late["estimation_error.accuracy"]) < 0.03
    assert abs(late["estimation_error.roc_auc"]) < 0.04
    assert late["concept_shift"] == 0.0
    stored = history(churn)[-1].metrics
    assert stored["estimated_recall"] == late["estimated_recall"]


def test_a_concept_shift_is_flagged_in_its_first_labelled_window(
    churn: Project, tmp_path: Path
) -> None:
    """The same kind of customers, but the market's churn drivers changed: the inputs have
    not drifted, the estimate stays where training put it and the truth does not."""
    shifted = Population(seed=22, size=2000, shift_month=0, after=AFTER_SHIFT)
    _truth(churn, tmp_path, _month(churn, tmp_path, shifted))
    m = monitor(churn, end=END).metrics
    assert m["drift"] < 0.2  # nothing for input drift to see
    assert m["concept_shift"] == 1.0
    assert m["estimation_error.accuracy"] < -0.1


def test_a_policy_acts_on_estimated_recall_before_the_truth_lands(
    churn: Project, tmp_path: Path
) -> None:
    """A decision threshold so high that few churners are flagged: the estimate shows the
    low recall in the month the decisions are made, and the policy alerts."""
    spec = churn.root / "copml.yaml"
    text = spec.read_text().replace("threshold: 0.5", "threshold: 0.9")
    start, end = text.index("policies:"), text.index("# After a shift")
    policy = "policies:\n  - name: early-warning\n    when: estimated_recall < 0.6 for 1 window\n"
    spec.write_text(text[:start] + policy + "    do: [alert]\n\n" + text[end:])
    project = load_project(churn.root)
    _month(project, tmp_path, Population(seed=23, size=1000))
    window = monitor(project, end=END)
    assert window.metrics["estimated_recall"] < 0.6 and math.isnan(window.metrics["recall"])
    result = operate_once(project, at=END)
    assert [e.outcome for e in result.evaluations] == [True]
    assert [(a["kind"], a["state"]) for a in result.actions] == [("alert", "succeeded")]


def test_the_dashboard_charts_each_declared_metric_it_estimates(churn: Project) -> None:
    from copml.ui.charts import timeline_panels

    estimated = {p.metric: p for p in timeline_panels(churn) if p.metric.startswith("estimated_")}
    assert set(estimated) == {"estimated_accuracy", "estimated_recall", "estimated_roc_auc"}
    assert estimated["estimated_recall"].lines == (("min 0.55", 0.55),)  # the declared bound
