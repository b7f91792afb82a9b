"""The gate's comparison with the champion, on real figures of real models.

Each task's metric table says which way a metric is better, so a challenger with a lower
RMSE or log loss beats its champion, and one with a higher RMSE does not. The figures come
from models fitted on scikit-learn's real data sets, against a baseline that predicts the
mean (or the class prior), so which one is better is a fact of the data, not of the test.
"""

from __future__ import annotations

import math

import pytest

from copml import metrics
from copml.operate.lifecycle import champion_shortfall
from copml.spec import Spec, parse_spec
from test_spec import diabetes_spec, wine_spec

Figures = dict[str, float]


@pytest.fixture(scope="module")
def diabetes() -> tuple[Figures, Figures]:
    """Holdout figures of a linear model and of the mean predictor, on the same rows."""
    from sklearn.datasets import load_diabetes
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True)
    x_fit, x_out, y_fit, y_out = train_test_split(x, y, test_size=0.25, random_state=0)
    model = LinearRegression().fit(x_fit, y_fit)
    mean = DummyRegressor(strategy="mean").fit(x_fit, y_fit)
    return (
        metrics.regression_metrics(y_out, model.predict(x_out)),
        metrics.regression_metrics(y_out, mean.predict(x_out)),
    )


@pytest.fixture(scope="module")
def wine() -> tuple[Figures, Figures]:
    """Holdout figures of a logistic regression and of the class-prior predictor."""
    from sklearn.datasets import load_wine
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_wine()
    names = data.target_names[data.target]
    x_fit, x_out, y_fit, y_out = train_test_split(
        data.data, names, test_size=0.3, random_state=0, stratify=names
    )
    classes = list(data.target_names)
    out = []
    for estimator in (
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        DummyClassifier(strategy="prior"),
    ):
        estimator.fit(x_fit, y_fit)
        assert list(estimator.classes_) == classes  # probability columns in class order
        out.append(
            metrics.multiclass_metrics(
                y_out, estimator.predict(x_out), classes, estimator.predict_proba(x_out)
            )
        )
    return out[0], out[1]


def _spec(text: str, metric: str, min_gain: float = 0.0) -> Spec:
    return parse_spec(text + f"promotion: {{metric: {metric}, min_gain: {min_gain}}}\n")


@pytest.mark.parametrize(
    ("task", "metric"),
    [
        ("diabetes", "rmse"),
        ("diabetes", "mae"),
        ("diabetes", "r2"),
        ("wine", "log_loss"),
        ("wine", "accuracy"),
        ("wine", "precision.class=class_1"),
    ],
)
def test_the_better_model_wins_the_way_its_metric_is_better(
    task: str, metric: str, request: pytest.FixtureRequest
) -> None:
    model, baseline = request.getfixturevalue(task)
    spec = _spec(diabetes_spec() if task == "diabetes" else wine_spec(), metric)
    direction = spec.metrics.direction(metric, spec.classes)
    # The fitted model is the better one on this data, whichever way the metric points.
    if direction == "lower":
        assert model[metric] < baseline[metric]
    else:
        assert model[metric] > baseline[metric]

    assert champion_shortfall(spec, model, baseline, "1") is None
    refusal = champion_shortfall(spec, baseline, model, "1")
    assert refusal is not None
    assert refusal.startswith(f"{metric} {baseline[metric]:.4f} against champion v1's")
    assert f"({direction} is better)" in refusal


def test_the_gain_must_reach_min_gain(diabetes: tuple[Figures, Figures]) -> None:
    model, mean = diabetes
    gain = mean["rmse"] - model["rmse"]  # RMSE falls: the model's gain is positive
    assert gain > 0

    assert champion_shortfall(_spec(diabetes_spec(), "rmse", gain - 1), model, mean, "2") is None
    refusal = champion_shortfall(_spec(diabetes_spec(), "rmse", gain + 1), model, mean, "2")
    assert refusal is not None
    assert f"a gain of {gain:+.4f}, short of min_gain {gain + 1:g}" in refusal


def test_a_figure_missing_on_either_side_refuses(diabetes: tuple[Figures, Figures]) -> None:
    """No figure is no evidence of a gain: refused with a reason, never a KeyError."""
    model, mean = diabetes
    spec = _spec(diabetes_spec(), "rmse")
    without = {k: v for k, v in mean.items() if k != "rmse"}

    assert champion_shortfall(spec, model, without, "3") == (
        "rmse is not measured for champion v3: nothing shows the candidate is better"
    )
    undefined = {**model, "rmse": math.nan}
    assert champion_shortfall(spec, undefined, mean, "3") == (
        "rmse is not measured for the candidate: nothing shows the candidate is better"
    )
