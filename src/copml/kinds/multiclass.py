"""The multiclass kind: a scikit-learn-compatible classifier over a table whose target is a
``category`` with its classes as ``categories``. It answers every class's probability, the
most probable class as the label (its probability as the score), and sends a decision to a
person when the top two classes are within ``model.review_margin``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from copml import batch_independence, estimation
from copml.errors import UserCodeError
from copml.kinds import DecisionRule, Decisions, Holdout
from copml.kinds.table import TableKind, log_confusion
from copml.labels import Target
from copml.metrics import MULTICLASS, confusion_matrix, multiclass_metrics

if TYPE_CHECKING:
    from copml.project import Project
    from copml.registry import ModelVersion, TrainingRun
    from copml.spec import Data


class MulticlassKind(TableKind):
    """One label among the declared classes (see the module's docstring)."""

    name = "multiclass"
    takes_columns = True  # scored through batch_independence.model_scores
    metrics = MULTICLASS

    def target(self, data: Data) -> Target:
        return Target(tuple(data.columns[data.target].categories or ()))

    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray:
        """``predict_proba``, one column per class the model knows (``model.classes_``)."""
        if not hasattr(model, "predict_proba"):
            raise UserCodeError("train() must return a classifier with predict_proba()")
        return batch_independence.model_scores(
            model, lambda scorer, part: scorer.predict_proba(part), features
        )

    def _columns(self, project: Project, model: Any, width: int) -> np.ndarray:
        """The class code of each of the model's probability columns. ``train()`` gets the
        classes as codes (0, 1, …); a model fitted on the class names (an imported one) has
        them as its ``classes_``, coded here."""
        known = getattr(model, "classes_", None)
        if known is None:
            return np.arange(width)
        known = list(known)
        if all(isinstance(c, int | np.integer) for c in known):
            return np.asarray(known, dtype=np.int64)
        codes = self.target(project.spec.data).encode(known)
        if any(c is None for c in codes):
            raise UserCodeError(f"the model's classes {known} are not the declared classes")
        return np.asarray(codes, dtype=np.int64)

    def decide(self, project: Project, model: Any, scores: np.ndarray) -> Decisions:
        classes = self.target(project.spec.data).classes
        proba = np.zeros((len(scores), len(classes)), dtype=np.float64)
        if len(scores):
            proba[:, self._columns(project, model, scores.shape[1])] = scores
        order = np.argsort(-proba, axis=1, kind="stable")  # ties: the first declared class
        rows = np.arange(len(proba))
        label = order[:, 0] if len(proba) else np.zeros(0, dtype=np.int64)
        top = proba[rows, label]
        margin = project.spec.model.review_margin
        if margin is None or len(classes) < 2:
            review = np.zeros(len(proba), dtype=bool)
        else:
            review = top - proba[rows, order[:, 1]] < margin
        return Decisions(label.astype(np.int64), top, review, proba)

    def evaluate(
        self, project: Project, decisions: Decisions, actual: np.ndarray
    ) -> dict[str, float]:
        target = self.target(project.spec.data)
        return multiclass_metrics(
            target.decode(actual),
            target.decode(decisions.label),
            list(target.classes),
            decisions.probabilities,
        )

    def calibration(self, project: Project, holdout: Holdout) -> dict[str, Any] | None:
        """Each declared class's probability calibrated one against the rest on the
        holdout (:func:`copml.estimation.fit_multiclass_calibration`)."""
        proba = holdout.decisions.probabilities
        if proba is None:
            return None
        return estimation.fit_multiclass_calibration(proba, holdout.actual, holdout.decisions.label)

    def estimate(
        self,
        project: Project,
        decided: pd.DataFrame,
        calibrations: Mapping[str, dict[str, Any] | None],
    ) -> dict[str, float]:
        """From the logged per-class probabilities, calibrated by each row's version; {}
        (unknown) where a row's probabilities were not logged."""
        logged = decided.get("probabilities")
        if logged is None or not len(logged) or logged.isna().any():
            return {}
        proba = np.vstack(logged.to_list()).astype(np.float64)
        found = estimation.calibrated_by_version(proba, decided["model_version"], calibrations)
        if found is None:
            return {}
        probability, se = found
        label = decided["label"].to_numpy(dtype=np.int64)
        return estimation.multiclass_estimates(probability, label, se)

    def log_evaluation(self, holdout: Holdout, run: TrainingRun) -> None:
        classes = list(holdout.classes)
        predicted = np.asarray(classes, dtype=object)[holdout.decisions.label]
        actual = np.asarray(classes, dtype=object)[np.asarray(holdout.actual, dtype=np.int64)]
        log_confusion(run, confusion_matrix(actual, predicted, classes), classes)

    def output_drift(self, project: Project, decided: pd.DataFrame) -> dict[str, pd.Series]:
        """The predicted class's shares: a shift in what the model says before any truth."""
        target = self.target(project.spec.data)
        shown = target.decode(decided["label"].to_numpy(dtype=np.int64))
        return {"prediction": pd.Series(shown, dtype=object).astype(str)}

    def explained_output(self, record: dict[str, Any]) -> int:
        return int(record["label"])  # why this class was chosen

    def _space(self, project: Project, record: dict[str, Any] | None) -> str:
        if record is None:
            return "margin of the chosen class"
        return f"margin of class {self.target(project.spec.data).show(record['label'])}"

    def decision_rule(self, project: Project, mv: ModelVersion) -> DecisionRule:
        margin = project.spec.model.review_margin
        review = None if margin is None else f"top two classes within {margin:g}"
        return DecisionRule(np.nan, review)
