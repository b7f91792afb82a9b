"""Shared set-up for the benchmarks: a churn project with a HistGradientBoosting pipeline
(the pipeline the speed targets were set with) and large batches from the simulator."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from copml import snapshots
from copml.apps.churn.simulation import BEFORE_SHIFT, Population
from copml.project import Project, load_project
from copml.scaffold import init
from copml.store import open_store
from copml.train import train

WORK = Path(__file__).parent / ".work"

HGB_TRAIN = """
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

NUMERIC = ["tenure", "MonthlyCharges", "TotalCharges", "SeniorCitizen"]


def train(data, params, seed):
    features = data.drop(columns=["Churn"])
    categorical = [c for c in features.columns if c not in NUMERIC]
    prepare = ColumnTransformer(
        [("categorical", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
          categorical)],
        remainder="passthrough",
    )
    model = HistGradientBoostingClassifier(max_iter=int(params.get("max_iter", 100)),
                                           random_state=seed)
    return Pipeline([("prepare", prepare), ("classify", model)]).fit(features, data["Churn"])
"""


@contextmanager
def timed(label: str, results: dict[str, float]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    results[label] = time.perf_counter() - start
    print(f"  {label}: {results[label]:.2f} s", flush=True)


def hgb_project(name: str, max_iter: int = 100) -> Project:
    """A fresh project trained with the HGB pipeline (``max_iter`` trees), champion set."""
    root = WORK / name
    shutil.rmtree(root, ignore_errors=True)
    init(root, "churn")
    (root / "churn_hgb.py").write_text(HGB_TRAIN)
    spec = root / "copml.yaml"
    spec.write_text(spec.read_text().replace("train: churn:train", "train: churn_hgb:train"))
    project = load_project(root)
    project.ensure_home()
    engine = open_store(project.db_url)
    snapshots.create(engine, project.spec.data, root=root, directory=project.snapshots_dir)
    result = train(project, params={"max_iter": max_iter})
    assert result.champion, result.failures
    return project


def batch(path: Path, rows: int, seed: int = 1) -> Path:
    """``rows`` customers in the Telco schema, written as Parquet (cached between runs)."""
    if path.exists() and len(pd.read_parquet(path, columns=["customerID"])) == rows:
        return path
    population = Population(seed=seed, size=1)
    frame = population.new_customers(rows, BEFORE_SHIFT, existing=True)
    frame["customerID"] = [f"C{i:09d}" for i in range(rows)]
    frame["SeniorCitizen"] = frame["SeniorCitizen"].astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path
