"""The compiled column preparation (copml.compiled, issue 16): scores bit for bit those of
scikit-learn's own pipeline, on 100,000 rows and on any batch they are cut into; whatever it
cannot take exactly goes to scikit-learn whole; a tree model is scored unpadded."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from copml import batch_independence, compiled
from copml.apps.churn.simulation import BEFORE_SHIFT, Population
from copml.evaluation import positive_scores

NUMERIC = ["tenure", "MonthlyCharges", "TotalCharges", "SeniorCitizen"]


def _customers(n: int, seed: int) -> pd.DataFrame:
    frame = Population(seed=seed, size=1).new_customers(n, BEFORE_SHIFT, existing=True)
    frame["SeniorCitizen"] = frame["SeniorCitizen"].astype(np.int64)
    return frame.drop(columns=["customerID"])


@pytest.fixture(scope="module")
def fitted() -> tuple[pd.DataFrame, pd.Series]:
    frame = _customers(4000, seed=3)
    rng = np.random.default_rng(3)
    churn = (rng.random(len(frame)) < 0.1 + 0.4 * (frame["Contract"] == "Month-to-month")).astype(
        int
    )
    return frame, pd.Series(churn)


def _categorical(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in NUMERIC]


def _trees(frame: pd.DataFrame, y: pd.Series, unknown: str = "use_encoded_value") -> Pipeline:
    encoder = (
        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
        if unknown == "use_encoded_value"
        else OrdinalEncoder()
    )
    prepare = ColumnTransformer(
        [("categorical", encoder, _categorical(frame))], remainder="passthrough"
    )
    model = HistGradientBoostingClassifier(max_iter=60, random_state=0)
    return Pipeline([("prepare", prepare), ("classify", model)]).fit(frame, y)


def _linear(frame: pd.DataFrame, y: pd.Series) -> Pipeline:
    prepare = ColumnTransformer(
        [
            ("numeric", StandardScaler(), ["tenure", "MonthlyCharges"]),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                _categorical(frame),
            ),
        ],
        remainder="passthrough",
    )
    model = LogisticRegression(max_iter=500)
    numeric = frame.fillna({"TotalCharges": 0.0})
    return Pipeline([("prepare", prepare), ("classify", model)]).fit(numeric, y)


def test_a_tree_pipeline_scores_100000_rows_bit_for_bit_as_scikit_learn(fitted) -> None:
    frame, y = fitted
    model = _trees(frame, y)
    stand_in, exact = compiled.plan(model)
    assert stand_in is not model and exact  # compiled, and scored unpadded
    rows = _customers(100_000, seed=11)
    assert rows["TotalCharges"].isna().any()  # new customers: missing numbers reach trees

    fast = positive_scores(model, rows)
    assert np.array_equal(fast, model.predict_proba(rows)[:, 1])  # scikit-learn, one call
    padded = batch_independence.scores(lambda p: model.predict_proba(p)[:, 1], rows)
    assert np.array_equal(fast, padded)  # the fixed-shape rule it replaces for trees
    # Any cut of the batch, down to single rows, frames or the server's plain columns.
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 37, 300):
        at = np.sort(rng.choice(len(rows), size, replace=False))
        part = rows.iloc[at].reset_index(drop=True)
        assert np.array_equal(positive_scores(model, part), fast[at])
        columns = {c: part[c].astype(object).where(part[c].notna(), None).tolist() for c in part}
        assert np.array_equal(positive_scores(model, columns), fast[at])


def test_a_linear_pipeline_is_compiled_but_keeps_its_padding(fitted) -> None:
    frame, y = fitted
    model = _linear(frame, y)
    stand_in, exact = compiled.plan(model)
    assert stand_in is not model and not exact  # BLAS kernels follow the batch's shape
    rows = _customers(5000, seed=12).fillna({"TotalCharges": 0.0})
    rows.loc[0, "PaymentMethod"] = "carrier pigeon"  # an unknown category: all zeros
    expected = batch_independence.scores(lambda p: model.predict_proba(p)[:, 1], rows)
    assert np.array_equal(positive_scores(model, rows), expected)
    assert np.array_equal(
        stand_in.predict_proba(rows.iloc[:50]), model.predict_proba(rows.iloc[:50])
    )


def test_what_the_compiled_steps_cannot_take_goes_to_scikit_learn(fitted) -> None:
    frame, y = fitted
    model = _trees(frame, y, unknown="error")
    stand_in, _ = compiled.plan(model)
    rows = _customers(20, seed=13)
    odd = rows.copy()
    odd.loc[3, "Contract"] = "lifetime"
    with pytest.raises(ValueError) as ours:
        positive_scores(model, odd)
    with pytest.raises(ValueError) as theirs:
        model.predict_proba(odd)
    assert str(ours.value) == str(theirs.value)  # scikit-learn's refusal, word for word
    lenient = _trees(frame, y)
    missing = rows.copy()
    missing.loc[5, "Contract"] = None  # a missing category: scikit-learn decides
    assert compiled.plan(lenient)[0]._prepared(compiled._Rows(missing)) is None
    assert np.array_equal(positive_scores(lenient, missing), lenient.predict_proba(missing)[:, 1])
    # The same in a frame large enough to be looked up in Arrow, with an unseen category too.
    big = _customers(2000, seed=16)
    big.loc[7, "Contract"] = "lifetime"
    assert np.array_equal(positive_scores(lenient, big), lenient.predict_proba(big)[:, 1])
    assert compiled.plan(lenient)[0]._prepared(compiled._Rows(big)) is not None
    big.loc[9, "PaymentMethod"] = None
    assert compiled.plan(lenient)[0]._prepared(compiled._Rows(big)) is None
    assert np.array_equal(positive_scores(lenient, big), lenient.predict_proba(big)[:, 1])
    texts = {c: rows[c].tolist() for c in rows}
    texts["tenure"] = [str(v) for v in texts["tenure"]]  # numbers sent as text
    assert stand_in._prepared(compiled._Rows(texts)) is None


def test_an_unsupported_step_leaves_the_model_as_it_is(fitted) -> None:
    frame, y = fitted
    prepare = ColumnTransformer([("numeric", SimpleImputer(), NUMERIC)], remainder="drop")
    model = Pipeline([("prepare", prepare), ("m", HistGradientBoostingRegressor(max_iter=5))])
    model.fit(frame, y.astype(float))
    assert compiled.plan(model) == (model, False)
    bare = HistGradientBoostingRegressor(max_iter=5).fit(frame[NUMERIC], y.astype(float))
    assert compiled.plan(bare) == (bare, True)  # a tree on its own: unpadded


def test_a_compiled_step_that_differs_is_never_used(fitted, monkeypatch, caplog) -> None:
    frame, y = fitted
    model = _trees(frame, y)

    def off_by_one(columns):
        return lambda rows: rows.numeric(columns) + 1.0

    monkeypatch.setattr(compiled, "_passthrough", off_by_one)
    stand_in, _ = compiled.plan(model)
    rows = _customers(40, seed=14).fillna({"TotalCharges": 0.0})
    with caplog.at_level(logging.WARNING, logger="copml.compiled"):
        assert np.array_equal(stand_in.predict_proba(rows), model.predict_proba(rows))
    assert "differs" in caplog.text
    assert stand_in._blocks is None  # off for good
    assert np.array_equal(stand_in.predict_proba(rows), model.predict_proba(rows))


def test_the_tree_walk_gives_scikit_learns_raw_scores_for_every_task(fitted) -> None:
    """Multiclass (a tree per class and iteration), regression (the identity link) and
    missing numbers, walked for small batches and left to scikit-learn for large ones."""
    frame, _ = fitted
    rows = _customers(3000, seed=15)
    three = pd.Series(np.asarray(frame["Contract"].factorize()[0]))
    prepare = ColumnTransformer(
        [("categorical", OrdinalEncoder(), ["gender", "Partner", "InternetService"])],
        remainder="passthrough",
    )
    keep = ["gender", "Partner", "InternetService", *NUMERIC]
    models = {
        "multiclass": Pipeline(
            [("p", prepare), ("m", HistGradientBoostingClassifier(max_iter=30, random_state=0))]
        ).fit(frame[keep], three),
        "regression": Pipeline(
            [("p", prepare), ("m", HistGradientBoostingRegressor(max_iter=30, random_state=0))]
        ).fit(frame[keep], frame["MonthlyCharges"] * 2.5),
    }
    for name, model in models.items():
        stand_in, exact = compiled.plan(model)
        assert exact and isinstance(stand_in._final, compiled._Trees), name
        method = "predict_proba" if name == "multiclass" else "predict"
        for size in (1, 5, compiled._WALK_ROWS, compiled._WALK_ROWS + 1, 3000):
            part = rows[keep].iloc[:size]
            ours = getattr(stand_in, method)(part)
            assert np.array_equal(ours, getattr(model, method)(part)), (name, size)
