"""Fairness figures per monitoring window: hand-computed values, unknowns as NaN, real data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from conftest import shared_file
from copml.monitor.fairness import fairness, metric_names

NAN = math.nan


def _window() -> pd.DataFrame:
    """Two groups, A and B, four predictions each, one B row not yet labelled.

    A: labels 1 1 0 0, actual 1 1 0 0 -> selection 2/4 = 0.5, TPR 2/2 = 1.0, FPR 0/2 = 0.
    B: labels 1 0 0 0, actual 1 1 0 ? -> selection 1/4 = 0.25, TPR 1/2 = 0.5, FPR 0/1 = 0.
    Demographic parity difference |0.5 - 0.25| = 0.25.
    Equalized odds difference max(|1.0 - 0.5|, |0 - 0|) = 0.5.
    """
    return pd.DataFrame(
        {
            "label": [1, 1, 0, 0, 1, 0, 0, 0],
            "score": [0.9, 0.8, 0.2, 0.1, 0.7, 0.4, 0.3, 0.2],
            "actual": [1, 1, 0, 0, 1, 1, 0, NAN],
            "group": ["A"] * 4 + ["B"] * 4,
            "tenure": [1, 2, 3, 4, 5, 6, 7, 8],
        }
    )


def test_hand_computed_figures() -> None:
    metrics, detail = fairness(_window(), ["group"])
    assert metrics == {
        "demographic_parity_difference.group": 0.25,
        "equalized_odds_difference.group": 0.5,
        "selection_rate.group=A": 0.5,
        "recall.group=A": 1.0,
        "selection_rate.group=B": 0.25,
        "recall.group=B": 0.5,
    }
    assert detail["group"]["A"] == {
        "n": 4.0,
        "selection_rate": 0.5,
        "recall": 1.0,
        "labelled": 4.0,
        "positives": 2.0,
    }
    assert detail["group"]["B"] == {
        "n": 4.0,
        "selection_rate": 0.25,
        "recall": 0.5,
        "labelled": 3.0,
        "positives": 2.0,
    }


def test_equalized_odds_takes_the_larger_of_the_rate_gaps() -> None:
    # A: actual 1 0 0 0, labels 1 1 0 0 -> TPR 1/1, FPR 1/3.
    # B: actual 1 1 0 0, labels 1 0 0 0 -> TPR 1/2, FPR 0/2.  Gaps 0.5 and 1/3 -> 0.5.
    frame = pd.DataFrame(
        {
            "label": [1, 1, 0, 0, 1, 0, 0, 0],
            "score": 0.5,
            "actual": [1, 0, 0, 0, 1, 1, 0, 0],
            "group": ["A"] * 4 + ["B"] * 4,
        }
    )
    metrics, _ = fairness(frame, ["group"])
    assert metrics["equalized_odds_difference.group"] == 0.5
    frame["actual"] = [1, 0, 0, 0, 1, 1, 1, 0]  # B: TPR 1/3, FPR 0/1 -> gaps 2/3 and 1/3
    metrics, _ = fairness(frame, ["group"])
    assert metrics["equalized_odds_difference.group"] == pytest.approx(2 / 3)


def test_group_text_for_ints_categoricals_and_missing_values() -> None:
    frame = _window()
    frame["senior"] = [0, 1, 0, 1, 0, 0, 1, NAN]  # floats because of the NaN
    frame["group"] = frame["group"].astype("category")
    metrics, detail = fairness(frame, ["group", "senior"])
    assert metrics["selection_rate.group=A"] == 0.5
    assert set(detail["senior"]) == {"0", "1"}  # 1.0 is named 1; the NaN row has no group
    # senior=0: rows 0, 2, 4, 5 -> labels 1 0 1 0; senior=1: rows 1, 3, 6 -> labels 1 0 0.
    assert metrics["selection_rate.senior=0"] == 0.5
    assert metrics["selection_rate.senior=1"] == pytest.approx(1 / 3)
    assert metrics["demographic_parity_difference.senior"] == pytest.approx(0.5 - 1 / 3)
    assert detail["senior"]["0"]["n"] + detail["senior"]["1"]["n"] == 7


def test_metric_names() -> None:
    assert metric_names(["gender", "SeniorCitizen"]) == [
        "demographic_parity_difference.gender",
        "equalized_odds_difference.gender",
        "demographic_parity_difference.SeniorCitizen",
        "equalized_odds_difference.SeniorCitizen",
    ]
    assert metric_names([]) == []


def test_no_labelled_rows_gives_unknown_odds_and_recall() -> None:
    frame = _window()
    frame["actual"] = NAN
    metrics, detail = fairness(frame, ["group"])
    assert metrics["demographic_parity_difference.group"] == 0.25  # needs no ground truth
    assert math.isnan(metrics["equalized_odds_difference.group"])
    assert math.isnan(metrics["recall.group=A"])
    assert math.isnan(metrics["recall.group=B"])
    assert detail["group"]["A"]["labelled"] == 0
    no_column, _ = fairness(frame.drop(columns=["actual"]), ["group"])
    assert no_column.keys() == metrics.keys()
    assert all(
        (math.isnan(a) and math.isnan(b)) or a == b
        for a, b in zip(no_column.values(), metrics.values(), strict=True)
    )


def test_absent_column_gives_unknown_differences_and_no_groups() -> None:
    metrics, detail = fairness(_window(), ["group", "gender"])
    assert math.isnan(metrics["demographic_parity_difference.gender"])
    assert math.isnan(metrics["equalized_odds_difference.gender"])
    assert not any(name.startswith(("selection_rate.gender", "recall.gender")) for name in metrics)
    assert detail["gender"] == {}
    assert metrics["demographic_parity_difference.group"] == 0.25


def test_single_group_gives_unknown_differences() -> None:
    frame = _window()
    frame["group"] = "A"
    metrics, detail = fairness(frame, ["group"])
    assert math.isnan(metrics["demographic_parity_difference.group"])
    assert math.isnan(metrics["equalized_odds_difference.group"])
    assert metrics["selection_rate.group=A"] == 3 / 8
    assert metrics["recall.group=A"] == 0.75  # actual positives 4, predicted 1 for 3
    assert list(detail["group"]) == ["A"]


def test_group_without_positives_gives_unknown_recall_and_odds() -> None:
    frame = _window()
    frame["actual"] = [1, 1, 0, 0, 0, 0, 0, NAN]  # B has no actual positives
    metrics, detail = fairness(frame, ["group"])
    assert math.isnan(metrics["recall.group=B"])
    assert metrics["recall.group=A"] == 1.0
    assert math.isnan(metrics["equalized_odds_difference.group"])
    assert detail["group"]["B"]["positives"] == 0
    assert metrics["demographic_parity_difference.group"] == 0.25


def test_empty_window_and_all_missing_groups() -> None:
    empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("label", "score", "actual")})
    empty["group"] = pd.Series(dtype="object")
    metrics, detail = fairness(empty, ["group"])
    assert set(metrics) == set(metric_names(["group"]))
    assert all(math.isnan(v) for v in metrics.values())
    assert detail == {"group": {}}
    frame = _window()
    frame["group"] = np.nan
    metrics, _ = fairness(frame, ["group"])
    assert set(metrics) == set(metric_names(["group"]))
    assert all(math.isnan(v) for v in metrics.values())


@pytest.mark.realdata
def test_real_telco_churn_predictions() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    data = pd.read_csv(shared_file("telco-churn", "WA_Fn-UseC_-Telco-Customer-Churn.csv"))
    data["TotalCharges"] = pd.to_numeric(data["TotalCharges"], errors="coerce")
    y = (data.pop("Churn") == "Yes").astype(int)
    x = data.drop(columns=["customerID"])
    numeric = ["tenure", "MonthlyCharges", "TotalCharges", "SeniorCitizen"]
    categorical = [c for c in x.columns if c not in numeric]
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
                ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
            ]
        ),
        LogisticRegression(max_iter=1000),
    )
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=42, stratify=y
    )
    model.fit(x_train, y_train)
    score = model.predict_proba(x_test)[:, 1]
    frame = pd.DataFrame(
        {
            "label": (score >= 0.5).astype(int),
            "score": score,
            "actual": y_test.to_numpy(),
            "gender": x_test["gender"].to_numpy(),
            "SeniorCitizen": x_test["SeniorCitizen"].to_numpy(),
        }
    )

    metrics, detail = fairness(frame, ["gender", "SeniorCitizen"])

    groups = {"gender": ["Female", "Male"], "SeniorCitizen": ["0", "1"]}
    for column, names in groups.items():
        assert sorted(detail[column]) == names
        figures = [f"{m}.{column}" for m in ("demographic_parity_difference",)]
        figures += ["equalized_odds_difference." + column]
        figures += [f"{m}.{column}={g}" for m in ("selection_rate", "recall") for g in names]
        for name in figures:
            assert 0.0 <= metrics[name] <= 1.0, name
        rates = frame.groupby(column)["label"].mean()
        assert sorted(str(g) for g in rates.index) == names
        for group, rate in rates.items():
            assert metrics[f"selection_rate.{column}={group}"] == pytest.approx(rate)
        assert metrics[f"demographic_parity_difference.{column}"] == pytest.approx(
            rates.max() - rates.min()
        )
        assert sum(detail[column][g]["n"] for g in names) == len(frame)
    # Senior citizens churn more, and the model flags them more often (0.43 against 0.18).
    assert metrics["selection_rate.SeniorCitizen=1"] > metrics["selection_rate.SeniorCitizen=0"]


def test_collapsed_rows_give_fairlearns_figures_on_every_row() -> None:
    """The figures come from the rows collapsed with weights; fairlearn on every row (the
    slow way) must give the same numbers, missing groups and mixed dtypes included."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    rng = np.random.default_rng(7)
    n = 3000
    groups = rng.choice(np.array(["a", "b", "c", None], dtype=object), n, p=[0.5, 0.3, 0.15, 0.05])
    frame = pd.DataFrame(
        {
            "label": rng.integers(0, 2, n),
            "actual": np.where(rng.random(n) < 0.8, rng.integers(0, 2, n), NAN),
            "group": groups,
            "senior": rng.choice(np.array([0, 1.0, 1, None], dtype=object), n),
        }
    )
    metrics, detail = fairness(frame, ["group", "senior"])
    for column in ("group", "senior"):
        rows = frame[frame[column].notna()]
        text = rows[column].map(lambda v: str(int(v)) if isinstance(v, float) else str(v))
        assert metrics[f"demographic_parity_difference.{column}"] == pytest.approx(
            demographic_parity_difference(rows["label"], rows["label"], sensitive_features=text),
            abs=1e-12,
        )
        known = rows["actual"].notna().to_numpy()
        assert metrics[f"equalized_odds_difference.{column}"] == pytest.approx(
            equalized_odds_difference(
                rows["actual"][known].astype(int),
                rows["label"][known],
                sensitive_features=text[known],
            ),
            abs=1e-12,
        )
        for g in sorted(set(text)):
            in_group = (text == g).to_numpy()
            assert detail[column][g]["n"] == in_group.sum()
            assert detail[column][g]["labelled"] == (in_group & known).sum()
            assert metrics[f"selection_rate.{column}={g}"] == pytest.approx(
                rows["label"][in_group].mean(), abs=1e-12
            )
    assert sorted(detail["senior"]) == ["0", "1"]
