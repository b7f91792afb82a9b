"""SHAP explanations: global importance per version, local per prediction (design §1, §7).

A scikit-learn ``Pipeline`` whose last step is a linear model or a tree ensemble
(scikit-learn's, XGBoost's, LightGBM's) is explained exactly in its own output space
(log-odds for a linear model and the boosted classifiers), on the transformed features: the
linear model by SHAP's interventional values in closed form, trees by ``shap.TreeExplainer``.
The values of the columns derived from one input feature (e.g. its one-hot columns) are
summed back to that feature, so people read "Contract", not
"categorical__Contract_Month-to-month". SHAP's additivity holds: base value + the values =
the model's log-odds for that row.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from copml import prediction_log, registry, snapshots
from copml.errors import CopmlError, NotFoundError, UnknownPrediction
from copml.project import Project
from copml.store import open_store

BACKGROUND_ROWS = 200
IMPORTANCE_ROWS = 1000
ARTIFACT_DIR = "explain"


@dataclass
class Explanation:
    """One prediction's explanation in the model's own output (a binary's log-odds, a
    class's margin, a value): ``base + sum(values) == output``."""

    prediction_id: str | None
    model_version: str
    base_value: float
    output: float
    score: float
    values: dict[str, float]
    input: dict[str, Any]

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.values.items(), key=lambda kv: -abs(kv[1]))[:n]


def _parts(model: Any) -> tuple[Any, Any]:
    """(preprocessing, final estimator) of a pipeline, or (None, model)."""
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline) and len(model.steps) > 1:
        return model[:-1], model.steps[-1][1]
    return None, model


def _groups(prepare: Any, features: list[str], n_out: int) -> list[str]:
    """For each transformed column, the input feature it comes from."""
    if prepare is None:
        return list(features)
    try:
        names = [str(n) for n in prepare.get_feature_names_out()]
    except Exception:  # a transformer that cannot name its output
        names = []
    if len(names) != n_out:
        raise CopmlError("cannot map the model's transformed columns back to its features")
    by_length = sorted(features, key=len, reverse=True)
    out = []
    for name in names:
        bare = name.split("__", 1)[1] if "__" in name else name
        found = next((f for f in by_length if bare == f or bare.startswith(f + "_")), None)
        if found is None:
            raise CopmlError(f"cannot tell which feature the column {name!r} comes from")
        out.append(found)
    return out


def _tree_explainer(estimator: Any) -> Any:
    """SHAP's TreeExplainer, when SHAP reads this estimator's trees: scikit-learn's trees and
    ensembles, XGBoost, LightGBM, CatBoost. SHAP decides, not a list of class names here (an
    ``XGBClassifier`` or ``LGBMClassifier`` names no "Tree"); it refuses other models."""
    import shap

    # shap warns on every call for a LightGBM binary model that its output "has changed to a
    # list of ndarray" (an old change; the values are one row per input, as for XGBoost). A
    # process-wide filter, not catch_warnings: that one is not thread-safe, and servers explain.
    warnings.filterwarnings("ignore", message="LightGBM binary classifier with TreeExplainer")
    try:
        return shap.TreeExplainer(estimator)
    except ValueError as exc:  # shap's InvalidModelError: not a tree model it can read
        kind = type(estimator).__name__
        raise CopmlError(
            f"no SHAP explainer for a {kind}: linear models and tree ensembles only ({exc})"
        ) from None


class _Explainer:
    """A fitted explainer for one model, with its feature grouping."""

    def __init__(self, model: Any, background: pd.DataFrame, features: list[str]) -> None:
        self.features = features
        self.prepare, self.estimator = _parts(model)
        transformed = self._transform(background)
        self.explainer: Any = None
        if hasattr(self.estimator, "coef_"):
            # Linear: SHAP's interventional values have a closed form, coef·(x − E[x]), which
            # is what shap.LinearExplainer computes (a test holds them equal); doing it here
            # spares an audit the second it takes to import shap. One row of coefficients
            # per output: a binary's positive class, each class of a multiclass, a value.
            self.coef = np.atleast_2d(np.asarray(self.estimator.coef_, dtype=np.float64))
            self.mean = transformed.mean(axis=0)
            intercept = np.atleast_1d(np.asarray(self.estimator.intercept_, dtype=np.float64))
            self.base = intercept + self.coef @ self.mean
        else:
            self.explainer = _tree_explainer(self.estimator)
        self.groups = _groups(self.prepare, features, transformed.shape[1])

    def outputs(self) -> int:
        """How many outputs the model has to explain (one per class of a multiclass one)."""
        if self.explainer is None:
            return len(self.coef)
        return len(np.atleast_1d(self.explainer.expected_value))

    def _transform(self, frame: pd.DataFrame) -> np.ndarray:
        data = self.prepare.transform(frame[self.features]) if self.prepare else frame
        if hasattr(data, "toarray"):
            data = data.toarray()
        return np.asarray(data, dtype=np.float64)

    def explain(
        self, frame: pd.DataFrame, output: int = -1
    ) -> tuple[np.ndarray, float, pd.DataFrame]:
        """(per-row values grouped by feature, base value, the rows' model output) of the
        model's ``output`` (-1: the last, a binary's positive class or a value; a class's
        position for a multiclass model)."""
        transformed = self._transform(frame)
        if self.explainer is None:
            values = (transformed - self.mean) * self.coef[output]
            base = float(self.base[output])
        else:
            # float64: XGBoost answers in float32, and a float32 sum of the values misses what
            # a reader adding them up gets by ~1e-7
            values = np.asarray(self.explainer.shap_values(transformed), dtype=np.float64)
            if values.ndim == 3:  # one slice per class
                values = values[..., output]
            base = float(
                np.asarray(self.explainer.expected_value, dtype=np.float64).ravel()[output]
            )
        grouped = pd.DataFrame(values).T.groupby(np.array(self.groups), sort=False).sum().T
        grouped = grouped.reindex(columns=self.features, fill_value=0.0)
        return grouped.to_numpy(), float(base), grouped


@cache
def _explainer(project_root: str, version: str) -> _Explainer:
    from copml.evaluation import split_holdout
    from copml.kinds import kind_for
    from copml.project import load_project

    project = load_project(project_root)
    lineage = registry.recorded(project, version)
    model = registry.load_recorded(project, version, lineage.artifact_sha256)
    # An imported version has no training snapshot: the one it was checked on stands in.
    snap = snapshots.get(open_store(project.db_url), lineage.reference_snapshot_id, missing_ok=True)
    if snap is None:
        raise NotFoundError(f"the training snapshot of v{version} is not in this store")
    spec = project.spec
    frame = kind_for(spec).training_frame(project, snap)
    seed = lineage.seed_or(spec.model.seed)
    fit_rows = ~split_holdout(frame, spec.data.target, spec.model.holdout, seed)
    background = frame.loc[fit_rows, spec.data.features].sample(
        min(BACKGROUND_ROWS, int(fit_rows.sum())), random_state=seed
    )
    return _Explainer(model, background, spec.data.features)


def explainer(project: Project, version: str) -> _Explainer:
    return _explainer(str(project.root), version)


def global_importance(
    model: Any, background: pd.DataFrame, rows: pd.DataFrame, features: list[str]
) -> dict[str, float]:
    """Mean |SHAP| per feature over ``rows`` (and over the classes of a multiclass model),
    largest first."""
    found = _Explainer(model, background, features)
    outputs = range(found.outputs())
    mean = np.mean([np.abs(found.explain(rows, i)[0]).mean(axis=0) for i in outputs], axis=0)
    return dict(sorted(zip(features, map(float, mean), strict=True), key=lambda kv: -kv[1]))


def importance_figure(importance: dict[str, float], title: str) -> Any:
    """Importance as horizontal bars; a figure of its own (not pyplot's global list), so
    threads may draw at once."""
    from matplotlib.figure import Figure

    items = list(importance.items())[:15][::-1]
    fig = Figure(figsize=(7, 0.35 * len(items) + 1.2))
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color="#1f4e79")
    ax.set_xlabel("mean |SHAP value| (log-odds)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def cache_path(project: Project, prediction_id: str) -> Path:
    return project.home / "explanations" / f"{prediction_id}.json"


def prediction_frame(project: Project, record: dict[str, Any]) -> pd.DataFrame:
    """The stored input of a decision as the model saw it: one row, declared types."""
    features = project.spec.data.features
    if record["snapshot_id"] is not None:
        snap = snapshots.get(open_store(project.db_url), record["snapshot_id"])
        assert snap is not None
        return snap.row(record["snapshot_row"])[features]
    stored = record["input"] or {}
    return pd.DataFrame({c: [stored.get(c)] for c in features})


def explain_prediction(
    project: Project,
    prediction_id: str,
    *,
    record: dict[str, Any] | None = None,
    frame: pd.DataFrame | None = None,
    output: int = -1,
) -> Explanation:
    """The local explanation of one stored decision (computed once, then cached), of the
    model's ``output`` (see :meth:`_Explainer.explain`). ``record`` and ``frame``, when
    the caller has them already, save reading them again."""
    if prediction_log.split_id(prediction_id) is None:  # before the id names a cache file
        raise UnknownPrediction(prediction_id)
    cached = cache_path(project, prediction_id)
    if cached.exists():
        return Explanation(**json.loads(cached.read_text()))
    record = record or prediction_log.record(open_store(project.db_url), prediction_id)
    if record is None:
        raise UnknownPrediction(prediction_id)
    version = record["model_version"]
    frame = prediction_frame(project, record) if frame is None else frame
    values, base, _ = explainer(project, version).explain(frame, output)
    row = values[0]
    found = Explanation(
        prediction_id=prediction_id,
        model_version=version,
        base_value=base,
        output=float(base + row.sum()),
        score=float(record["score"]),
        values={f: float(v) for f, v in zip(project.spec.data.features, row, strict=True)},
        input=json.loads(frame.to_json(orient="records"))[0],
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Whole or absent: a request reading it meanwhile never sees half a file.
    staged = cached.with_name(f".{cached.name}.{uuid.uuid4().hex}")
    staged.write_text(json.dumps(asdict(found)))
    os.replace(staged, cached)
    return found


def logit(p: float) -> float:
    """Log-odds of a probability: what an explanation's values add up to."""
    p = min(max(p, 1e-15), 1 - 1e-15)
    return math.log(p / (1 - p))
