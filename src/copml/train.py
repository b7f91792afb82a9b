"""Tracked, seeded, reproducible training of the team's ``train(data, params, seed)``.

One call: load a snapshot, split a deterministic holdout, run the team's function inside
an MLflow run that logs everything needed to reproduce it, register the model with its
lineage and artifact sha256, and make it champion when it meets the spec and none exists.
"""

from __future__ import annotations

import json
import platform
import random
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata, util
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from copml import batch_independence, costs, events, lineage, registry, snapshots
from copml.errors import CopmlError, UserCodeError
from copml.metrics import classification_metrics
from copml.project import Project
from copml.store import open_store
from copml.usercode import load_function

MODEL_ARTIFACT = "model"
_PACKAGES = ("copml", "scikit-learn", "pandas", "numpy", "pyarrow", "mlflow", "cloudpickle")


@dataclass
class TrainResult:
    run_id: str
    version: str
    snapshot_id: str
    metrics: dict[str, float]
    meets_minimums: bool
    failures: list[str] = field(default_factory=list)
    champion: bool = False


def seed_everything(seed: int) -> None:
    """Seed every generator a training function is likely to use."""
    random.seed(seed)
    np.random.seed(seed)
    if util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(seed)


def git_state(root: Path) -> tuple[str, bool]:
    """The commit of the project's code and whether the tree had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            != ""
        )
    except (OSError, subprocess.CalledProcessError):
        return "none", True
    return commit, dirty


def model_packages(model: Any) -> list[str]:
    """The distributions the model's own classes come from (``xgboost``, ``lightgbm``, …),
    found in it and its nested estimators: the run records their versions and the MLflow
    model requires them, so a version scored or reproduced elsewhere gets the same library."""
    found = [model]
    if hasattr(model, "get_params"):
        found += [v for v in model.get_params(deep=True).values() if hasattr(v, "get_params")]
    # A module may come from a distribution of another name (xgboost from xgboost-cpu):
    # packages_distributions maps them (a few hundred ms, once per training run).
    roots = {type(part).__module__.split(".")[0] for part in found}
    roots -= {"builtins", "copml", "sklearn", *_PACKAGES}
    if not roots:
        return []
    owners = metadata.packages_distributions()
    return sorted({dist for root in roots for dist in owners.get(root, [root])} - {*_PACKAGES})


def package_versions(extra: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in (*_PACKAGES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def split_holdout(frame: pd.DataFrame, target: str, share: float, seed: int) -> np.ndarray:
    """A stratified, seeded holdout mask: the same snapshot and seed give the same split.

    Data that names its own split (a ``split`` column, as image sets do: ``train``/``val``)
    is held out as named, so the reported figures are those of the team's evaluation set."""
    from sklearn.model_selection import train_test_split

    if "split" in frame:
        named = frame["split"].notna() & (frame["split"] != "train")
        if named.any() and not named.all():
            return named.to_numpy()

    index = np.arange(len(frame))
    stratify = frame[target] if frame[target].nunique() > 1 else None
    _, test = train_test_split(index, test_size=share, random_state=seed, stratify=stratify)
    mask = np.zeros(len(frame), dtype=bool)
    mask[test] = True
    return mask


def model_inputs(project: Project, frame: pd.DataFrame) -> list[str]:
    """The columns ``train()`` and the model get: the features, or for images the whole
    table of files (``file`` is the verified archived copy the networks read)."""
    data = project.spec.data
    if data.kind == "images":
        return [c for c in frame.columns if c != data.target]
    return data.features


def training_frame(project: Project, snap: snapshots.Snapshot) -> pd.DataFrame:
    """Features plus the target as 0/1 (1 = the declared positive), as ``train()`` gets it."""
    data = project.spec.data
    frame = snap.load()
    if data.kind == "images":
        from copml import image_archive

        archive = image_archive.directory(project.home)
        frame["file"] = [str(image_archive.get(archive, d)) for d in frame["sha256"]]
    out = frame[model_inputs(project, frame)].copy()
    out[data.target] = (frame[data.target].astype(str) == str(data.positive)).astype(np.int8)
    return out


def positive_scores(model: Any, features: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class (label 1) from a fitted classifier, each row's the
    same whatever else is in ``features`` (see :mod:`copml.batch_independence`); a model that
    says ``score_rows`` is scored that many rows per call."""
    if not hasattr(model, "predict_proba"):
        raise UserCodeError("train() must return a classifier with predict_proba()")
    column = list(getattr(model, "classes_", [0, 1])).index(1)
    rows = int(getattr(model, "score_rows", batch_independence.ROWS))
    return batch_independence.scores(
        lambda part: model.predict_proba(part)[:, column], features, rows
    )


def decision_threshold(project: Project, model: Any) -> float:
    """A cascade decides at its own threshold (chosen for recall); others at the spec's."""
    return float(getattr(model, "decision_threshold", project.spec.model.threshold))


def holdout_metrics(
    project: Project, model: Any, features: pd.DataFrame, actual: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """Scores and figures of ``model`` on held-out rows, as training and the gate see them."""
    score = positive_scores(model, features)
    metrics = classification_metrics(actual, score >= decision_threshold(project, model), score)
    if hasattr(model, "type_metrics"):  # a cascade's second model, on the same holdout
        metrics.update(model.type_metrics(features[actual == 1]))
    return score, metrics


def minimum_failures(project: Project, metrics: dict[str, float]) -> list[str]:
    """The declared effectiveness thresholds this version misses on the holdout."""
    failures = []
    for name, bound in project.spec.effectiveness.thresholds.items():
        value = metrics.get(name, float("nan"))
        if np.isnan(value) or not bound.met(value):
            failures.append(f"{name} = {value:.3f} (needs {bound.model_dump(exclude_none=True)})")
    return failures


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


def _register_parts(project: Project, run_id: str, tags: dict[str, str]) -> dict[str, str]:
    """Each network of a cascade as its own registered model version."""
    folder = f"{MODEL_ARTIFACT}/artifacts/cascade"
    lineage_tags = {k: v for k, v in tags.items() if k != "copml.state"}
    return {
        part: registry.register_part(project, part, run_id, f"{folder}/{sub}", lineage_tags)
        for part, sub in (("pneumonia", "detector"), ("type", "typer"))
    }


def train(
    project: Project,
    *,
    snapshot_id: str | None = None,
    params: dict[str, Any] | None = None,
    seed: int | None = None,
    actor: str = "system",
    at: datetime | None = None,
    run_tags: dict[str, str] | None = None,
) -> TrainResult:
    """Run the team's ``train`` as a tracked MLflow run and register the model."""
    spec = project.spec
    train_fn = load_function(project.root, spec.model.train, "train function")
    engine = open_store(project.db_url)
    snap = snapshots.get(engine, snapshot_id) if snapshot_id else snapshots.latest(engine)
    assert snap is not None
    if snap.schema.get("target") is None:
        raise CopmlError(f"snapshot {snap.id[:12]} has no target column; it cannot train")
    params = {**spec.model.params, **(params or {})}
    seed = spec.model.seed if seed is None else seed
    frame = training_frame(project, snap)
    holdout = split_holdout(frame, spec.data.target, spec.model.holdout, seed)
    commit, dirty = git_state(project.root)

    import mlflow
    from mlflow.models import infer_signature

    registry.client(project)
    exp_id = registry.experiment_id(project)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_params({f"param.{k}": v for k, v in params.items()})
        mlflow.log_params(
            {
                "seed": seed,
                "snapshot_id": snap.id,
                "holdout": spec.model.holdout,
                "threshold": spec.model.threshold,
            }
        )
        mlflow.set_tags(
            {
                "copml.snapshot_id": snap.id,
                "copml.git_commit": commit,
                "copml.git_dirty": str(dirty).lower(),
                "copml.actor": actor,
                "copml.train": spec.model.train,
                **(run_tags or {}),
            }
        )
        seed_everything(seed)
        fit_part = frame.loc[~holdout].reset_index(drop=True)
        try:
            with costs.metered(engine, "train", at=at, detail=f"run {run.info.run_id}"):
                model = train_fn(fit_part, dict(params), seed)
        except Exception as exc:
            raise UserCodeError(f"train() failed: {type(exc).__name__}: {exc}") from exc
        versions = package_versions(model_packages(model))
        mlflow.log_dict(versions, "environment/packages.json")
        inputs = model_inputs(project, frame)
        features = frame.loc[holdout, inputs].reset_index(drop=True)
        actual = frame.loc[holdout, spec.data.target].to_numpy()
        score, metrics = holdout_metrics(project, model, features, actual)
        mlflow.log_param("decision_threshold", decision_threshold(project, model))
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items() if not np.isnan(v)})
        mlflow.log_dict(
            {
                "labels": [0, 1],
                "matrix": [[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]],
            },
            "holdout/confusion_matrix.json",
        )
        mlflow.log_figure(_confusion_figure(metrics), "holdout/confusion_matrix.png")
        requirements = [f"{k}=={v}" for k, v in versions.items() if k != "python"]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / MODEL_ARTIFACT
            if spec.model.task == "cascade":
                from copml.vision import pyfunc

                mlflow.set_tag("copml.explanation", "attribution maps of model 1 on request")
                pyfunc.save(model, folder, requirements)
            else:
                _log_importance(model, fit_part[inputs], features, inputs, seed)
                example = features.head(5)
                mlflow.sklearn.save_model(
                    model,
                    folder,
                    signature=infer_signature(example, score[:5]),
                    input_example=example,
                    serialization_format="cloudpickle",
                    pip_requirements=requirements,
                )
            sha = registry.directory_sha256(folder)
            mlflow.log_artifacts(str(folder), MODEL_ARTIFACT)
        failures = minimum_failures(project, metrics)
        mlflow.set_tag("copml.artifact_sha256", sha)
        tags = {
            "copml.snapshot_id": snap.id,
            "copml.artifact_sha256": sha,
            "copml.seed": str(seed),
            "copml.git_commit": commit,
            "copml.git_dirty": str(dirty).lower(),
            "copml.params": json.dumps(params, sort_keys=True, default=str),
            "copml.state": "validated" if not failures else "registered",
        }
        if spec.model.task == "cascade":
            tags["copml.parts"] = json.dumps(_register_parts(project, run.info.run_id, tags))
        mv = registry.register(project, run.info.run_id, MODEL_ARTIFACT, tags)
    result = TrainResult(run.info.run_id, mv.version, snap.id, metrics, not failures, failures)
    lineage.emit(
        project,
        "train",
        run_id=run.info.run_id,
        inputs=[lineage.snapshot_dataset(project, snap)],
        outputs=[lineage.model_dataset(project, mv.version)],
        at=at,
    )
    with engine.begin() as conn:
        events.record(
            conn,
            "model.registered",
            actor=actor,
            subject=f"model:{spec.project}/{mv.version}",
            reason="meets the declared minimums" if not failures else "; ".join(failures),
            evidence={
                "run_id": run.info.run_id,
                "snapshot_id": snap.id,
                "seed": seed,
                "holdout": {k: v for k, v in metrics.items() if not np.isnan(v)},
                "artifact_sha256": sha,
                "git_commit": commit,
                "git_dirty": dirty,
                "params": params,
            },
            at=at,
        )
    # The first good version serves at once, unless a person must approve promotions.
    approval = spec.impact == "high" or spec.promotion.require_approval
    if not failures and not approval and registry.champion(project) is None:
        registry.promote(
            project,
            engine,
            mv.version,
            actor=actor,
            reason="first version that meets the declared minimums",
            evidence={"holdout": {k: metrics[k] for k in spec.effectiveness.thresholds}},
            at=at,
        )
        result.champion = True
    return result
