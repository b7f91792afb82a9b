"""The regression kind: a scikit-learn-compatible regressor over a table whose target is a
``float``. The predicted value is both the answer's label and its score; once the truth
lands, the residual (truth minus prediction) is watched for drift beside the prediction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from copml import batch_independence
from copml.errors import UserCodeError
from copml.kinds import Decisions
from copml.kinds.table import TableKind
from copml.labels import Target
from copml.metrics import REGRESSION, regression_metrics

if TYPE_CHECKING:
    from copml.project import Project
    from copml.spec import Data


class RegressionKind(TableKind):
    """A value per row (see the module's docstring)."""

    name = "regression"
    metrics = REGRESSION
    space = "value"

    def target(self, data: Data) -> Target:
        return Target()

    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray:
        if not hasattr(model, "predict"):
            raise UserCodeError("train() must return a regressor with predict()")
        rows = int(getattr(model, "score_rows", batch_independence.ROWS))
        return batch_independence.scores(
            lambda part: np.asarray(model.predict(part), dtype=np.float64).ravel(), features, rows
        )

    def decide(self, project: Project, model: Any, scores: np.ndarray) -> Decisions:
        n = len(scores)
        return Decisions(np.zeros(n, dtype=np.int8), scores, np.zeros(n, dtype=bool))

    def evaluate(
        self, project: Project, decisions: Decisions, actual: np.ndarray
    ) -> dict[str, float]:
        return regression_metrics(np.asarray(actual, dtype=np.float64), decisions.score)

    def output_drift(self, project: Project, decided: pd.DataFrame) -> dict[str, pd.Series]:
        score = decided["score"].astype(np.float64)
        return {"prediction": score, "residual": decided["actual"].astype(np.float64) - score}
