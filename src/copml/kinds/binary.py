"""The binary kind: a scikit-learn-compatible classifier over a table, scored by the
probability of the declared positive class and decided at the spec's threshold."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from copml.errors import CopmlError
from copml.evaluation import positive_scores
from copml.kinds import DecisionRule, PredictApi
from copml.labels import decide
from copml.metrics import BINARY, classification_metrics

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from copml.project import Project
    from copml.registry import ModelVersion
    from copml.snapshots import Snapshot
    from copml.spec import Data

# name → the direction in which it is better (the confusion counts are reported, not gated)
METRICS = BINARY


def _confusion_figure(metrics: dict[str, float]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cells, cmap="Blues")
    for (i, j), v in np.ndenumerate(cells):
        ax.text(j, i, f"{int(v)}", ha="center", va="center")
    ax.set_xticks([0, 1], ["predicted 0", "predicted 1"])
    ax.set_yticks([0, 1], ["actual 0", "actual 1"])
    ax.set_title("holdout confusion matrix")
    fig.tight_layout()
    return fig


def log_confusion(metrics: dict[str, float]) -> None:
    """The holdout's confusion matrix as JSON and a plot, in the active MLflow run."""
    import mlflow

    cells = [[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]]
    mlflow.log_dict({"labels": [0, 1], "matrix": cells}, "holdout/confusion_matrix.json")
    mlflow.log_figure(_confusion_figure(metrics), "holdout/confusion_matrix.png")


def _log_importance(
    model: Any, fit: pd.DataFrame, holdout: pd.DataFrame, features: list[str], seed: int
) -> None:
    """Global SHAP importance on the holdout, as a JSON artifact and a plot. A model SHAP
    cannot explain still trains: the run says why there is no explanation."""
    import mlflow

    from copml import explain

    try:
        importance = explain.global_importance(
            model,
            fit.sample(min(explain.BACKGROUND_ROWS, len(fit)), random_state=seed),
            holdout.head(explain.IMPORTANCE_ROWS),
            features,
        )
    except Exception as exc:
        mlflow.set_tag("copml.explanation", f"unavailable: {type(exc).__name__}: {exc}"[:250])
        return
    mlflow.log_dict(importance, f"{explain.ARTIFACT_DIR}/importance.json")
    figure = explain.importance_figure(importance, "global importance (holdout)")
    mlflow.log_figure(figure, f"{explain.ARTIFACT_DIR}/importance.png")
    mlflow.set_tag("copml.explanation", "shap")


class BinaryKind:
    """Today's table classifier (see the module's docstring)."""

    name = "binary"
    data_kind = "table"
    metrics = METRICS

    def training_frame(self, project: Project, snap: Snapshot) -> pd.DataFrame:
        """Features plus the target as 0/1 (1 = the declared positive)."""
        data = project.spec.data
        frame = snap.load()
        out = frame[self.model_inputs(project, frame)].copy()
        out[data.target] = (frame[data.target].astype(str) == str(data.positive)).astype(np.int8)
        return out

    def model_inputs(self, project: Project, frame: pd.DataFrame) -> list[str]:
        return project.spec.data.features

    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray:
        return positive_scores(model, features)

    def decision_threshold(self, project: Project, model: Any) -> float:
        return float(project.spec.model.threshold)

    def decide(
        self, project: Project, model: Any, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        threshold = self.decision_threshold(project, model)
        return decide(scores, threshold, project.spec.serving.review_band)

    def holdout_metrics(
        self, project: Project, model: Any, features: pd.DataFrame, actual: np.ndarray
    ) -> tuple[np.ndarray, dict[str, float]]:
        score = self.scores(model, features)
        predicted = score >= self.decision_threshold(project, model)
        return score, classification_metrics(actual, predicted, score)

    def save(
        self,
        model: Any,
        folder: Path,
        *,
        fit: pd.DataFrame,
        holdout: pd.DataFrame,
        scores: np.ndarray,
        metrics: dict[str, float],
        inputs: list[str],
        requirements: list[str],
        seed: int,
    ) -> None:
        import mlflow.sklearn
        from mlflow.models import infer_signature

        log_confusion(metrics)
        _log_importance(model, fit[inputs], holdout, inputs, seed)
        example = holdout.head(5)
        mlflow.sklearn.save_model(
            model,
            folder,
            signature=infer_signature(example, scores[:5]),
            input_example=example,
            serialization_format="cloudpickle",
            pip_requirements=requirements,
        )

    def register_parts(
        self, project: Project, run_id: str, artifact: str, tags: dict[str, str]
    ) -> dict[str, str]:
        return {}

    def load(self, path: Path) -> Any:
        model_file = path / "model.pkl"
        if model_file.exists():
            # What mlflow.sklearn.load_model does for a cloudpickle'd model, without importing
            # MLflow (a second and a half): an audit's replay answers in a fresh process.
            import cloudpickle

            with model_file.open("rb") as fh:
                return cloudpickle.load(fh)
        import mlflow.sklearn

        return mlflow.sklearn.load_model(str(path))

    def warm(self, model: Any, path: Path, features: list[str]) -> None:
        from mlflow.models import Model

        example = Model.load(str(path)).load_input_example(str(path))
        if example is not None:
            self.scores(model, example[features])

    def served_models(self, version: str, parts: dict[str, str]) -> dict[str, str]:
        return {}

    def explain(
        self,
        project: Project,
        prediction_id: str,
        *,
        record: dict[str, Any] | None = None,
        inline: bool = False,
    ) -> dict[str, Any]:
        from copml.explain import explain_prediction

        found = explain_prediction(project, prediction_id, record=record)
        return {"space": "log-odds", **found.__dict__}

    def explanation_lines(self, found: dict[str, Any]) -> list[str]:
        lines = [
            f"v{found['model_version']}: score {found['score']:.4f} = log-odds "
            f"{found['output']:+.3f} = base {found['base_value']:+.3f} plus"
        ]
        values = sorted(found["values"].items(), key=lambda kv: -abs(kv[1]))
        for name, value in values:
            bar = "█" * min(40, int(abs(value) * 20))
            colour = "red" if value > 0 else "green"
            shown = found["input"].get(name)
            lines.append(f"  {name:<18} {value:+.3f} [{colour}]{bar}[/]  ({shown})")
        return lines

    def audit_entries(
        self, project: Project, record: dict[str, Any], *, explanation: bool
    ) -> dict[str, Any]:
        if not explanation:
            return {}
        from copml.explain import explain_prediction

        try:
            found = explain_prediction(project, record["prediction_id"], record=record)
        except Exception as exc:  # an audit record is still an audit record
            return {"explanation": {"unavailable": f"{type(exc).__name__}: {exc}"}}
        return {
            "explanation": {
                "space": "log-odds",
                "base_value": found.base_value,
                "output": found.output,
                "values": found.values,
            }
        }

    def replay_score(self, project: Project, model: Any, record: dict[str, Any]) -> float:
        from copml.explain import prediction_frame

        return float(self.scores(model, prediction_frame(project, record))[0])

    def monitored_features(self, data: Data) -> list[str]:
        return data.features

    def decision_rule(self, project: Project, mv: ModelVersion) -> DecisionRule:
        return DecisionRule(project.spec.model.threshold)

    def predict_api(
        self, project: Project, engine: Engine, slot: Any, clock: Callable[[], datetime] | None
    ) -> PredictApi | None:
        return None

    def batch_scorer(self) -> Callable[..., Any] | None:
        return None

    def snapshot(
        self, engine: Engine, data: Data, *, root: Path, directory: Path, source: str, actor: str
    ) -> Snapshot:
        raise CopmlError("a binary model reads tables: snapshots.create freezes them")

    def retraining_snapshot(
        self, project: Project, labelled: pd.DataFrame, *, actor: str
    ) -> tuple[Snapshot, int, int] | None:
        return None
