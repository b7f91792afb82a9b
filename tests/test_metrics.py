"""Metric tables and the multiclass and regression metrics, checked against scikit-learn's
own metrics on models fitted to scikit-learn's real data sets (wine, digits, diabetes)."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_diabetes, load_digits, load_wine
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from copml.metrics import (
    BINARY,
    MULTICLASS,
    REGRESSION,
    TABLES,
    confusion_matrix,
    log_loss,
    mape,
    multiclass_metrics,
    regression_metrics,
)


def _fitted(loader, model, stratify: bool = True):  # type: ignore[no-untyped-def]
    data = loader()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data,
        data.target,
        test_size=0.3,
        random_state=0,
        stratify=data.target if stratify else None,
    )
    model.fit(x_train, y_train)
    return data, model, x_test, y_test


def _compare_with_sklearn(actual, predicted, proba, classes) -> dict[str, float]:  # type: ignore[no-untyped-def]
    found = multiclass_metrics(actual, predicted, classes, proba)
    assert all(type(v) is float for v in found.values())  # JSON- and MLflow-ready
    assert found["accuracy"] == pytest.approx(skm.accuracy_score(actual, predicted))
    assert found["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(actual, predicted)
    )
    assert found["f1_macro"] == pytest.approx(skm.f1_score(actual, predicted, average="macro"))
    assert found["f1_weighted"] == pytest.approx(
        skm.f1_score(actual, predicted, average="weighted")
    )
    assert found["log_loss"] == pytest.approx(skm.log_loss(actual, proba, labels=classes))
    recall = skm.recall_score(actual, predicted, labels=classes, average=None, zero_division=0)
    precision = skm.precision_score(
        actual, predicted, labels=classes, average=None, zero_division=0
    )
    for i, c in enumerate(classes):
        if (np.asarray(actual) == c).any():
            assert found[f"recall.class={c}"] == pytest.approx(recall[i])
        if (np.asarray(predicted) == c).any():
            assert found[f"precision.class={c}"] == pytest.approx(precision[i])
    assert (
        confusion_matrix(actual, predicted, classes)
        == skm.confusion_matrix(actual, predicted, labels=classes)
    ).all()
    return found


def test_multiclass_metrics_match_sklearn_on_wine_with_named_classes() -> None:
    # A two-level tree: mistakes to count, and leaves that give a class probability 0 (the
    # log loss clips them, as scikit-learn does).
    data, model, x_test, y_test = _fitted(
        load_wine, DecisionTreeClassifier(max_depth=2, random_state=0)
    )
    names = list(data.target_names)  # class_0, class_1, class_2: labels are text
    actual = np.asarray(names, dtype=object)[y_test]
    predicted = np.asarray(names, dtype=object)[model.predict(x_test)]
    proba = model.predict_proba(x_test)
    assert (actual != predicted).sum() > 0 and (proba == 0).any()
    found = _compare_with_sklearn(actual, predicted, proba, names)
    assert set(found) == set(MULTICLASS.names(names))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_multiclass_metrics_match_sklearn_on_digits_with_errors_and_a_missing_class() -> None:
    # Naive Bayes on digits makes mistakes across the ten classes; dropping every 3 from the
    # truth leaves a class that is only ever predicted, as in a small monitoring window.
    _, model, x_test, y_test = _fitted(load_digits, GaussianNB())
    keep = y_test != 3
    actual, predicted = y_test[keep], model.predict(x_test)[keep]
    assert (predicted == 3).any() and (predicted != actual).sum() > 10
    classes = list(range(10))
    found = _compare_with_sklearn(actual, predicted, model.predict_proba(x_test)[keep], classes)
    assert math.isnan(found["recall.class=3"])  # unknown, not 0: no 3 was there to find
    assert found["precision.class=3"] == 0.0


def test_labels_are_matched_as_text_and_unknown_labels_are_refused() -> None:
    # Truth read from a CSV arrives as "1", the model's classes are integers.
    cm = confusion_matrix(["0", "1", "1"], [0, 1, 0], [0, 1])
    assert cm.tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match=r"\['7'\] are not among the classes"):
        multiclass_metrics([0, 7], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="one probability column per class"):
        log_loss([0, 1], np.array([[0.5, 0.5]] * 2), [0, 1, 2])


def test_regression_metrics_match_sklearn_on_diabetes_and_beat_the_mean() -> None:
    _, model, x_test, y_test = _fitted(load_diabetes, Ridge(alpha=0.1), stratify=False)
    predicted = model.predict(x_test)
    found = regression_metrics(y_test, predicted)
    assert all(type(v) is float for v in found.values())
    assert found["rmse"] == pytest.approx(skm.root_mean_squared_error(y_test, predicted))
    assert found["mae"] == pytest.approx(skm.mean_absolute_error(y_test, predicted))
    assert found["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y_test, predicted))
    assert found["r2"] == pytest.approx(skm.r2_score(y_test, predicted))
    assert found["bias"] == pytest.approx(np.mean(y_test - predicted))
    baseline = regression_metrics(y_test, np.full(len(y_test), y_test.mean()))
    assert found["rmse"] < baseline["rmse"] and baseline["r2"] == pytest.approx(0.0)


def test_mape_is_refused_when_the_truth_has_zeros() -> None:
    with pytest.raises(ValueError, match="the truth is 0 in 1 of 3 rows"):
        mape(np.array([0.0, 2.0, 4.0]), np.array([1.0, 2.0, 4.0]))
    found = regression_metrics(np.array([0.0, 2.0, 4.0]), np.array([1.0, 2.0, 5.0]))
    assert math.isnan(found["mape"]) and found["mae"] == pytest.approx(2 / 3)


def test_undefined_metrics_are_unknown_not_zero() -> None:
    constant = regression_metrics(np.array([5.0, 5.0]), np.array([4.0, 6.0]))
    assert math.isnan(constant["r2"]) and constant["bias"] == 0.0
    assert all(math.isnan(v) for v in regression_metrics(np.array([]), np.array([])).values())
    empty = multiclass_metrics([], [], ["a", "b"])
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["f1_macro"])


def test_tables_give_each_metric_its_direction() -> None:
    assert set(TABLES) == {"binary", "multiclass", "regression"}
    assert REGRESSION.direction("rmse") == "lower" and REGRESSION.direction("r2") == "higher"
    assert BINARY.direction("rmse") is None and REGRESSION.direction("accuracy") is None
    assert MULTICLASS.direction("log_loss") == "lower"
    assert MULTICLASS.direction("recall.class=virus", ["bacteria", "virus"]) == "higher"
    assert MULTICLASS.direction("recall.class=fungus", ["bacteria", "virus"]) is None
    assert BINARY.direction("recall.class=virus", ["virus"]) is None
    assert REGRESSION.gain("rmse", 50.0, 60.0) == 10.0  # lower is better: a gain of 10
    assert MULTICLASS.gain("recall.class=virus", 0.8, 0.9) == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="'bias' has no better direction"):
        REGRESSION.gain("bias", 1.0, 2.0)
    cascade = BINARY.extended("cascade", {"type_accuracy": "higher"})
    assert cascade.direction("type_accuracy") == "higher" and cascade.direction("recall")
    # What of the model's output is watched for drift: a residual only where there is a value.
    assert BINARY.drift == MULTICLASS.drift == cascade.drift == ("prediction",)
    assert REGRESSION.drift == ("prediction", "residual")
