"""XGBoost's and LightGBM's regressors through the regression kind (issue 13, item 4): a
team's ``train()`` returns ``XGBRegressor`` / ``LGBMRegressor`` fitted on scikit-learn's
diabetes data, and the model is gated, scored, served, labelled, monitored, audited,
replayed and explained (SHAP's TreeExplainer) like the linear one in test_tasks.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from copml import registry
from copml.operate import lifecycle
from copml.train import train
from test_tasks import (
    DIABETES,
    DIABETES_REQUIREMENTS,
    build,
    copied,
    regression_end_to_end,
    spec_text,
)

pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")

LIBRARIES = ("xgboost", "lightgbm")

# The team's code: gradient-boosted trees behind scikit-learn's API, on the raw features.
BOOSTED_CODE = """
TARGET = "{target}"


def train(data, params, seed):
    features = data.drop(columns=[TARGET])
    trees, depth = int(params["n_estimators"]), int(params["max_depth"])
    if params["library"] == "xgboost":
        from xgboost import XGBRegressor

        model = XGBRegressor(
            n_estimators=trees, max_depth=depth, learning_rate=0.1, random_state=seed
        )
    else:
        from lightgbm import LGBMRegressor

        model = LGBMRegressor(
            n_estimators=trees, max_depth=depth, num_leaves=2**depth, learning_rate=0.1,
            min_child_samples=10, random_state=seed, verbose=-1,
        )
    return model.fit(features, data[TARGET])
"""


@pytest.fixture(scope="module", params=LIBRARIES)
def trained_regressor(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """Diabetes with v1 (60 trees of depth 2 of one library) champion."""
    library = request.param
    root = tmp_path_factory.mktemp(f"{library}-diabetes") / "project"
    model = f"  params: {{library: {library}, n_estimators: 60, max_depth: 2}}\n"
    spec = spec_text(DIABETES, "regression", model, DIABETES_REQUIREMENTS)
    build(root, DIABETES, spec, code=BOOSTED_CODE)
    return library, root


def test_boosted_regressor_end_to_end(trained_regressor: tuple[str, Path], tmp_path: Path) -> None:
    """A 3-tree v2 loses to the champion by RMSE at the gate; the champion then goes the
    whole way, its explanations adding up to its predicted value (XGBoost in float32)."""
    library, trained = trained_regressor
    project = copied(trained, tmp_path)
    champion = registry.champion(project)
    assert champion is not None and champion.version == "1"
    assert type(registry.load(project, champion)).__module__.startswith(library)
    tags = registry.client(project).get_run(champion.run_id).data.tags
    assert tags["copml.explanation"] == "shap"

    weak = train(project, params={"n_estimators": 3})
    report = lifecycle.gate(project, weak.version)
    assert not report.passed and report.metric == "rmse" and report.champion == "1"
    assert report.candidate_metrics["rmse"] > report.champion_metrics["rmse"], report
    assert registry.champion(project).version == "1"  # type: ignore[union-attr]

    regression_end_to_end(project, DIABETES, tolerance=1e-4 if library == "xgboost" else 1e-6)
