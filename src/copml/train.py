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

from copml import costs, epochs, events, lineage, profiles, registry, snapshots
from copml.errors import CopmlError, UserCodeError
from copml.evaluation import minimum_failures, split_holdout
from copml.kinds import INPUT_PROFILE, Holdout, ModelKind, kind_for
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


def _register_parts(
    project: Project, kind: ModelKind, run_id: str, tags: dict[str, str]
) -> dict[str, str]:
    """A composite model's parts as their own registered versions ({} for one model)."""
    lineage_tags = {k: v for k, v in tags.items() if k != "copml.state"}
    return kind.register_parts(project, run_id, MODEL_ARTIFACT, lineage_tags)


def output_profile(
    project: Project, kind: ModelKind, model: Any, scores: np.ndarray, actual: np.ndarray
) -> dict[str, Any]:
    """Profiles of the model's own output on the holdout (its prediction and, for a
    regression, its residual): the reference that monitoring measures output drift against."""
    decisions = kind.decide(project, model, scores)
    decided = pd.DataFrame(
        {"label": decisions.label, "score": decisions.score, "review": decisions.review}
    )
    decided["actual"] = np.asarray(actual, dtype=np.float64)
    found = kind.output_drift(project, decided)
    return {
        name: profiles.profile_column(
            values, "numeric" if pd.api.types.is_numeric_dtype(values) else "categorical"
        )
        for name, values in found.items()
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
    kind = kind_for(spec)
    frame = kind.training_frame(project, snap)
    holdout = split_holdout(frame, spec.data.target, spec.model.holdout, seed)
    commit, dirty = git_state(project.root)

    with registry.training_run(project) as run:
        run.log_params({f"param.{k}": v for k, v in params.items()})
        run.log_params(
            {
                "seed": seed,
                "snapshot_id": snap.id,
                "holdout": spec.model.holdout,
            }
        )
        run.set_tags(
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
            with (
                costs.metered(engine, "train", at=at, detail=f"run {run.run_id}"),
                epochs.reporting(run),
            ):
                model = train_fn(fit_part, dict(params), seed)
        except Exception as exc:
            raise UserCodeError(f"train() failed: {type(exc).__name__}: {exc}") from exc
        versions = package_versions(model_packages(model))
        run.log_dict(versions, "environment/packages.json")
        inputs = kind.model_inputs(project, frame)
        features = frame.loc[holdout, inputs].reset_index(drop=True)
        actual = frame.loc[holdout, spec.data.target].to_numpy()
        score, metrics = kind.holdout_metrics(project, model, features, actual)
        if (threshold := kind.decision_threshold(project, model)) is not None:
            run.log_params({"decision_threshold": threshold})
        run.log_metrics(registry.holdout_names(metrics))
        requirements = [f"{k}=={v}" for k, v in versions.items() if k != "python"]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / MODEL_ARTIFACT
            decided = kind.decide(project, model, score)
            classes = kind.target(spec.data).classes
            measured = Holdout(
                fit_part, features, actual, score, metrics, inputs, seed, decided, classes
            )
            kind.save(model, folder, measured, run, requirements=requirements)
            # Inside the model folder: covered by its sha256, loaded with it, replayed with it.
            profile = kind.input_profile(project, model, measured)
            (folder / INPUT_PROFILE).write_text(json.dumps(profile, sort_keys=True))
            calibration = kind.calibration(project, measured)
            sha = registry.directory_sha256(folder)
            run.log_artifacts(folder, MODEL_ARTIFACT)
        failures = minimum_failures(project, metrics)
        run.set_tags({"copml.artifact_sha256": sha})
        tags = {
            "copml.snapshot_id": snap.id,
            "copml.artifact_sha256": sha,
            "copml.seed": str(seed),
            "copml.git_commit": commit,
            "copml.git_dirty": str(dirty).lower(),
            "copml.params": json.dumps(params, sort_keys=True, default=str),
            "copml.state": "validated" if not failures else "registered",
        }
        if parts := _register_parts(project, kind, run.run_id, tags):
            tags["copml.parts"] = json.dumps(parts)
        mv = registry.register(project, run.run_id, MODEL_ARTIFACT, tags)
    result = TrainResult(run.run_id, mv.version, snap.id, metrics, not failures, failures)
    lineage.emit(
        project,
        "train",
        run_id=run.run_id,
        inputs=[lineage.snapshot_dataset(project, snap)],
        outputs=[lineage.model_dataset(project, mv.version)],
        at=at,
    )
    with engine.begin() as conn:
        events.record(
            conn,
            events.Kind.MODEL_REGISTERED,
            actor=actor,
            subject=events.model_subject(spec.project, mv.version),
            reason="meets the declared minimums" if not failures else "; ".join(failures),
            evidence={
                "run_id": run.run_id,
                "snapshot_id": snap.id,
                "seed": seed,
                "holdout": {k: v for k, v in metrics.items() if not np.isnan(v)},
                "artifact_sha256": sha,
                "git_commit": commit,
                "git_dirty": dirty,
                "params": params,
                "output_profile": output_profile(project, kind, model, score, actual),
                "calibration": calibration,
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
