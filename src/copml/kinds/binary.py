"""The binary kind: a scikit-learn-compatible classifier over a table, scored by the
probability of the declared positive class and decided at the spec's threshold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from copml import estimation
from copml.evaluation import positive_scores
from copml.kinds import DecisionRule, Decisions, Holdout
from copml.kinds.table import TableKind, log_confusion
from copml.labels import Target, binary_target, decide
from copml.metrics import BINARY, classification_metrics

if TYPE_CHECKING:
    from copml.project import Project
    from copml.registry import ModelVersion, TrainingRun
    from copml.spec import Data

# name → the direction in which it is better (the confusion counts are reported, not gated)
METRICS = BINARY


def log_binary_confusion(run: TrainingRun, metrics: dict[str, float]) -> None:
    """The holdout's confusion matrix (from its counts), in the training run."""
    cells = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    log_confusion(run, cells, [0, 1])


class BinaryKind(TableKind):
    """Today's table classifier (see the module's docstring)."""

    name = "binary"
    takes_columns = True  # scored through batch_independence.model_scores
    metrics = METRICS
    space = "log-odds"

    def target(self, data: Data) -> Target:
        return binary_target(data)

    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray:
        return positive_scores(model, features)

    def decision_threshold(self, project: Project, model: Any) -> float | None:
        return float(project.spec.model.threshold)

    def decide(self, project: Project, model: Any, scores: np.ndarray) -> Decisions:
        threshold = self.decision_threshold(project, model)
        assert threshold is not None
        positive, review = decide(scores, threshold, project.spec.serving.review_band)
        return Decisions(positive.astype(np.int8), scores, review)

    def evaluate(
        self, project: Project, decisions: Decisions, actual: np.ndarray
    ) -> dict[str, float]:
        return classification_metrics(actual, decisions.label == 1, decisions.score)

    def calibration(self, project: Project, holdout: Holdout) -> dict[str, Any] | None:
        predicted = holdout.decisions.label == 1
        return estimation.fit_calibration(holdout.scores, holdout.actual, predicted)

    def estimate(
        self,
        project: Project,
        decided: pd.DataFrame,
        calibrations: Mapping[str, dict[str, Any] | None],
    ) -> dict[str, float]:
        scores = decided["score"].to_numpy(dtype=np.float64)
        found = estimation.calibrated_by_version(scores, decided["model_version"], calibrations)
        if found is None:
            return {}
        probability, se = found
        return estimation.binary_estimates(probability, decided["label"].to_numpy() == 1, se)

    def log_evaluation(self, holdout: Holdout, run: TrainingRun) -> None:
        log_binary_confusion(run, holdout.metrics)

    def decision_rule(self, project: Project, mv: ModelVersion) -> DecisionRule:
        return DecisionRule(project.spec.model.threshold)
