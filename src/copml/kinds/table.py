"""What every kind of scikit-learn-compatible model over a table shares: the team's
``train()`` gets the snapshot's features plus the encoded target, the model is saved as an
MLflow scikit-learn model (cloudpickle), explained by SHAP and replayed from its stored input.

The tasks (:mod:`copml.kinds.binary`, :mod:`~copml.kinds.multiclass`,
:mod:`~copml.kinds.regression`) differ only in how they code the target, decide, measure and
watch their output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from copml.errors import CopmlError
from copml.kinds import DecisionRule, Decisions, Holdout, PredictApi

_MAX_CATEGORIES = 1000  # more distinct values than this: an identifier, not a category

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from copml.labels import Target
    from copml.metrics import MetricTable
    from copml.project import Project
    from copml.registry import ModelVersion, TrainingRun
    from copml.snapshots import Snapshot
    from copml.spec import Data


def confusion_figure(cells: np.ndarray, labels: list[str]) -> Any:
    """A confusion matrix as a plot: rows the truth, columns the prediction."""
    from matplotlib.figure import Figure

    size = 2.4 + 0.45 * len(labels)
    fig = Figure(figsize=(size + 0.4, size))  # not pyplot's: its figure list is global
    ax = fig.subplots()
    ax.imshow(cells, cmap="Blues")
    for (i, j), v in np.ndenumerate(cells):
        ax.text(j, i, f"{int(v)}", ha="center", va="center")
    ticks = list(range(len(labels)))
    ax.set_xticks(ticks, [f"predicted {c}" for c in labels], rotation=45, ha="right")
    ax.set_yticks(ticks, [f"actual {c}" for c in labels])
    ax.set_title("holdout confusion matrix")
    fig.tight_layout()
    return fig


def log_confusion(run: TrainingRun, cells: np.ndarray, labels: list[object]) -> None:
    """The holdout's confusion matrix as JSON and a plot, in the training run."""
    matrix = np.asarray(cells).astype(int).tolist()
    run.log_dict({"labels": labels, "matrix": matrix}, "holdout/confusion_matrix.json")
    figure = confusion_figure(np.asarray(cells), [str(c) for c in labels])
    run.log_figure(figure, "holdout/confusion_matrix.png")


def _log_importance(
    run: TrainingRun,
    model: Any,
    fit: pd.DataFrame,
    holdout: pd.DataFrame,
    features: list[str],
    seed: int,
) -> None:
    """Global SHAP importance on the holdout, as a JSON artifact and a plot. A model SHAP
    cannot explain still trains: the run says why there is no explanation."""
    from copml import explain

    try:
        importance = explain.global_importance(
            model,
            fit.sample(min(explain.BACKGROUND_ROWS, len(fit)), random_state=seed),
            holdout.head(explain.IMPORTANCE_ROWS),
            features,
        )
    except Exception as exc:
        reason = f"unavailable: {type(exc).__name__}: {exc}"[:250]
        run.set_tags({"copml.explanation": reason})
        return
    run.log_dict(importance, f"{explain.ARTIFACT_DIR}/importance.json")
    figure = explain.importance_figure(importance, "global importance (holdout)")
    run.log_figure(figure, f"{explain.ARTIFACT_DIR}/importance.png")
    run.set_tags({"copml.explanation": "shap"})


class TableKind:
    """The shared half of the table kinds (see the module's docstring)."""

    name = "table"
    data_kind = "table"
    metrics: MetricTable
    space = "model output"  # what an explanation's values add up to
    # Whether scores() also takes the server's columns of plain values (a dict of lists), as
    # copml's own kinds do through batch_independence.model_scores; others get a frame.
    takes_columns = False

    # -- what a task defines ------------------------------------------------------------

    def target(self, data: Data) -> Target:
        raise NotImplementedError

    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def decide(self, project: Project, model: Any, scores: np.ndarray) -> Decisions:
        raise NotImplementedError

    def evaluate(
        self, project: Project, decisions: Decisions, actual: np.ndarray
    ) -> dict[str, float]:
        """The task's metrics of ``decisions`` against ``actual`` (codes)."""
        raise NotImplementedError

    def log_evaluation(self, holdout: Holdout, run: TrainingRun) -> None:
        """What the training run shows of the holdout besides its metrics (a plot)."""

    def output_drift(self, project: Project, decided: pd.DataFrame) -> dict[str, pd.Series]:
        return {"prediction": decided["score"].astype(np.float64)}

    def explained_output(self, record: dict[str, Any]) -> int:
        """Which of the model's outputs a decision's explanation explains (-1: the last,
        a binary's positive class or a regression's only one)."""
        return -1

    # -- shared ---------------------------------------------------------------------------

    def training_frame(self, project: Project, snap: Snapshot) -> pd.DataFrame:
        """Features plus the target as its codes (:meth:`target`)."""
        data = project.spec.data
        frame = snap.load()
        out = frame[self.model_inputs(project, frame)].copy()
        codes = self.target(data).encode(frame[data.target].tolist())
        out[data.target] = np.asarray(codes, dtype=np.float64)
        if not self.target(data).is_value:
            out[data.target] = out[data.target].astype(np.int64)
        return out

    def model_inputs(self, project: Project, frame: pd.DataFrame) -> list[str]:
        return project.spec.data.features

    def decision_threshold(self, project: Project, model: Any) -> float | None:
        return None

    def holdout_metrics(
        self, project: Project, model: Any, features: pd.DataFrame, actual: np.ndarray
    ) -> tuple[np.ndarray, dict[str, float]]:
        scores = self.scores(model, features)
        return scores, self.evaluate(project, self.decide(project, model, scores), actual)

    def calibration(self, project: Project, holdout: Holdout) -> dict[str, Any] | None:
        return None

    def estimate(
        self,
        project: Project,
        decided: pd.DataFrame,
        calibrations: Mapping[str, dict[str, Any] | None],
    ) -> dict[str, float]:
        return {}

    def window_metrics(self, project: Project, labelled: pd.DataFrame) -> dict[str, float]:
        probabilities = None
        logged = labelled.get("probabilities")
        if logged is not None and len(logged) and logged.notna().all():
            probabilities = np.vstack(logged.to_list())
        decisions = Decisions(
            labelled["label"].to_numpy(),
            labelled["score"].to_numpy(dtype=np.float64),
            labelled["review"].to_numpy(dtype=bool),
            probabilities,
        )
        return self.evaluate(project, decisions, labelled["actual"].to_numpy())

    def input_profile(self, project: Project, model: Any, holdout: Holdout) -> dict[str, Any]:
        """Each input's range (numbers) or set of values (categories) in the training
        snapshot: the rows the model was fitted on and its holdout."""
        snapshot = pd.concat([holdout.fit[holdout.inputs], holdout.features], ignore_index=True)
        found: dict[str, Any] = {}
        for name in holdout.inputs:
            values = snapshot[name].dropna()
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(
                values
            )
            if numeric and len(values):
                found[name] = {"min": float(values.min()), "max": float(values.max())}
            elif not numeric and values.nunique() <= _MAX_CATEGORIES:
                found[name] = {"values": sorted(map(str, values.unique()))}
        return {"columns": found}

    def screen(
        self, project: Project, model: Any, profile: dict[str, Any], columns: dict[str, list[Any]]
    ) -> list[tuple[str, ...]]:
        """A number outside its trained range (widened by ``range_margin``) or a category
        never seen in training; a missing value is the model's to handle."""
        margin = project.spec.serving.out_of_distribution.range_margin
        n = len(next(iter(columns.values()), []))
        failed: list[list[str]] = [[] for _ in range(n)]
        for name, trained in profile.get("columns", {}).items():
            given = columns.get(name)
            if given is None:
                continue
            if "values" in trained:
                known = set(trained["values"])
                for i, value in enumerate(given):
                    if value is not None and value == value and str(value) not in known:
                        failed[i].append(f"{name} {value!r} never seen in training")
                continue
            low, high = trained["min"], trained["max"]
            pad = margin * (high - low)
            values = _numbers(given)
            outside = (values < low - pad) | (values > high + pad)
            for i in np.flatnonzero(outside):
                failed[i].append(
                    f"{name} {given[i]!r} outside the trained range [{low:g}, {high:g}]"
                )
        return [tuple(f) for f in failed]

    def save(
        self,
        model: Any,
        folder: Path,
        holdout: Holdout,
        run: TrainingRun,
        *,
        requirements: list[str],
    ) -> None:
        import mlflow.sklearn
        from mlflow.models import infer_signature

        self.log_evaluation(holdout, run)
        inputs = holdout.inputs
        _log_importance(run, model, holdout.fit[inputs], holdout.features, inputs, holdout.seed)
        example = holdout.features.head(5)
        mlflow.sklearn.save_model(
            model,
            folder,
            signature=infer_signature(example, holdout.scores[:5]),
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
        from copml import prediction_log
        from copml.errors import UnknownPrediction
        from copml.explain import explain_prediction
        from copml.store import open_store

        if record is None and prediction_log.split_id(prediction_id) is not None:
            record = prediction_log.record(open_store(project.db_url), prediction_id)
            if record is None:
                raise UnknownPrediction(prediction_id)
        output = self.explained_output(record) if record is not None else -1
        found = explain_prediction(project, prediction_id, record=record, output=output)
        return {"space": self._space(project, record), **found.__dict__}

    def _space(self, project: Project, record: dict[str, Any] | None) -> str:
        return self.space

    def explanation_lines(self, found: dict[str, Any]) -> list[str]:
        lines = [
            f"v{found['model_version']}: score {found['score']:.4f}; {found['space']} "
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
            found = explain_prediction(
                project,
                record["prediction_id"],
                record=record,
                output=self.explained_output(record),
            )
        except Exception as exc:  # an audit record is still an audit record
            return {"explanation": {"unavailable": f"{type(exc).__name__}: {exc}"}}
        return {
            "explanation": {
                "space": self._space(project, record),
                "base_value": found.base_value,
                "output": found.output,
                "values": found.values,
            }
        }

    def replay_score(self, project: Project, model: Any, record: dict[str, Any]) -> float:
        from copml.explain import prediction_frame

        scores = self.scores(model, prediction_frame(project, record))
        return float(self.decide(project, model, scores).score[0])

    def monitored_features(self, data: Data) -> list[str]:
        return data.features

    def decision_rule(self, project: Project, mv: ModelVersion) -> DecisionRule:
        return DecisionRule(np.nan)

    def decide_rows(self, project: Project, model: Any, columns: dict[str, list[Any]]) -> Decisions:
        # The columns as they are to a kind that scores through model_scores (a compiled
        # model takes them without a frame: copml.compiled); a frame to any other.
        features = columns if self.takes_columns else pd.DataFrame(columns)
        return self.decide(project, model, self.scores(model, features))  # type: ignore[arg-type]

    def predict_api(
        self,
        project: Project,
        engine: Engine,
        slot: Any,
        clock: Callable[[], datetime] | None,
        arms: Any = None,
        shadow: Any = None,
        halt: Any = None,
    ) -> PredictApi | None:
        return None

    def batch_scorer(self) -> Callable[..., Any] | None:
        return None

    def declare_data(self, section: dict[str, Any]) -> dict[str, Any]:
        return section  # a table declares its own columns

    def snapshot(
        self, engine: Engine, data: Data, *, root: Path, directory: Path, source: str, actor: str
    ) -> Snapshot:
        raise CopmlError(f"a {self.name} model reads tables: snapshots.create freezes them")

    def retraining_snapshot(
        self, project: Project, labelled: pd.DataFrame, *, actor: str
    ) -> tuple[Snapshot, int, int] | None:
        return None


def _numbers(values: list[Any]) -> np.ndarray:
    """Plain numbers (None as NaN) as floats at NumPy's speed, a third of a millisecond less
    per served group than pandas; anything else as ``pd.to_numeric`` reads it."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy()
