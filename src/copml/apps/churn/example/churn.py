"""The team's code for the churn application: copml imports these two functions.

copml calls ``train(data, params, seed)`` with the snapshot's training rows: the feature
columns plus the target as 0/1 (1 = churned). It calls ``churn_rate(window)`` with one
monitoring window: a row per scored customer with ``label``, ``score`` and ``actual``.
"""

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

TARGET = "Churn"
NUMERIC = ["tenure", "MonthlyCharges", "TotalCharges"]


def train(data: pd.DataFrame, params: dict, seed: int) -> Pipeline:
    features = data.drop(columns=[TARGET])
    categorical = [c for c in features.columns if c not in NUMERIC]
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    prepare = ColumnTransformer(
        [
            ("numeric", numeric, NUMERIC),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    classifier = LogisticRegression(
        C=float(params.get("C", 1.0)), class_weight="balanced", max_iter=2000, random_state=seed
    )
    return Pipeline([("prepare", prepare), ("classify", classifier)]).fit(features, data[TARGET])


def churn_rate(window: pd.DataFrame) -> float:
    """Share of scored customers who churned (the business KPI: lower is better)."""
    known = window["actual"].dropna()
    return float(known.mean()) if len(known) else float("nan")
