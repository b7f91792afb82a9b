"""The regression kind: a scikit-learn-compatible regressor over a table whose target is a
``float``. The predicted value is both the answer's label and its score; once the truth
lands, the residual (truth minus prediction) is watched for drift beside the prediction.

A model whose ``predict`` takes ``return_std=True`` (``BayesianRidge``,
``GaussianProcessRegressor``, a ``Pipeline`` ending in one) is scored with its standard
deviation too, and ``model.review_interval`` sends a prediction whose 95 % interval
(± 1.96 σ) is wider than declared to a person."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from copml import batch_independence, estimation
from copml.errors import UserCodeError
from copml.kinds import DecisionRule, Decisions, Holdout
from copml.kinds.table import TableKind
from copml.labels import Target
from copml.metrics import REGRESSION, regression_metrics

if TYPE_CHECKING:
    from copml.project import Project
    from copml.registry import ModelVersion
    from copml.spec import Data


_Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: a 95 % interval is ± this σ


def _gives_std(model: Any) -> bool:
    """Whether the model (or a pipeline's last step) predicts with ``return_std``."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    try:
        return "return_std" in inspect.signature(final.predict).parameters
    except (TypeError, ValueError):
        return False


class RegressionKind(TableKind):
    """A value per row (see the module's docstring)."""

    name = "regression"
    takes_columns = True  # scored through batch_independence.model_scores
    metrics = REGRESSION
    space = "value"

    def target(self, data: Data) -> Target:
        return Target()

    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray:
        """The value per row; (value, σ) rows for a model that gives its uncertainty."""
        if not hasattr(model, "predict"):
            raise UserCodeError("train() must return a regressor with predict()")
        if _gives_std(model):

            def predict(scorer: Any, part: pd.DataFrame) -> np.ndarray:
                value, std = scorer.predict(part, return_std=True)
                return np.column_stack([np.ravel(value), np.ravel(std)])

            return batch_independence.model_scores(model, predict, features)
        return batch_independence.model_scores(
            model,
            lambda scorer, part: np.asarray(scorer.predict(part), dtype=np.float64).ravel(),
            features,
        )

    def decide(self, project: Project, model: Any, scores: np.ndarray) -> Decisions:
        n = len(scores)
        value = scores[:, 0] if scores.ndim == 2 else scores
        review = np.zeros(n, dtype=bool)
        if (widest := project.spec.model.review_interval) is not None:
            if scores.ndim != 2:
                raise UserCodeError(
                    "model.review_interval needs a model whose predict() takes return_std=True "
                    "(e.g. BayesianRidge, GaussianProcessRegressor)"
                )
            review = 2 * _Z95 * scores[:, 1] > widest
        return Decisions(np.zeros(n, dtype=np.int8), value, review)

    def evaluate(
        self, project: Project, decisions: Decisions, actual: np.ndarray
    ) -> dict[str, float]:
        return regression_metrics(np.asarray(actual, dtype=np.float64), decisions.score)

    def calibration(self, project: Project, holdout: Holdout) -> dict[str, Any] | None:
        """The holdout's error by decile of the prediction
        (:func:`copml.estimation.fit_error_bins`)."""
        return estimation.fit_error_bins(holdout.decisions.score, holdout.actual)

    def estimate(
        self,
        project: Project,
        decided: pd.DataFrame,
        calibrations: Mapping[str, dict[str, Any] | None],
    ) -> dict[str, float]:
        """Each logged prediction's error expected from its version's bin of it."""
        score = decided["score"].to_numpy(dtype=np.float64)
        found = estimation.binned_by_version(score, decided["model_version"], calibrations)
        if found is None:
            return {}
        return estimation.regression_estimates(*found)

    def decision_rule(self, project: Project, mv: ModelVersion) -> DecisionRule:
        widest = project.spec.model.review_interval
        return DecisionRule(
            np.nan, None if widest is None else f"95 % interval wider than {widest:g}"
        )

    def output_drift(self, project: Project, decided: pd.DataFrame) -> dict[str, pd.Series]:
        score = decided["score"].astype(np.float64)
        return {"prediction": score, "residual": decided["actual"].astype(np.float64) - score}
