"""The ``cascade`` model kind: model 1 (normal vs pneumonia, decided at a threshold chosen
for recall) and model 2 (bacteria vs virus) over x-ray images, registered, served, audited
and explained as one version. Registered through the ``copml.kinds`` entry point."""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from copml import registry
from copml.apps.xray import image_archive, image_sets
from copml.apps.xray.vision import CASCADE_METRICS
from copml.kinds import DecisionRule, Decisions, Holdout, PredictApi
from copml.kinds.binary import BinaryKind, log_binary_confusion

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from copml.project import Project
    from copml.snapshots import Snapshot
    from copml.spec import Data

ARTIFACT = "cascade"  # the networks' folder inside the MLflow model's artifacts
_PARTS = (("pneumonia", "detector"), ("type", "typer"))


class CascadeKind(BinaryKind):
    """Scored by P(pneumonia) like a binary model; everything image-shaped is its own."""

    name = "cascade"
    data_kind = "images"
    metrics = CASCADE_METRICS

    def training_frame(self, project: Project, snap: Snapshot) -> pd.DataFrame:
        """The snapshot's image table with ``file``, the verified archived copy the networks
        read, and the target as 0/1 (1 = pneumonia)."""
        data = project.spec.data
        frame = snap.load()
        archive = image_archive.directory(project.home)
        frame["file"] = [str(image_archive.get(archive, d)) for d in frame["sha256"]]
        out = frame[self.model_inputs(project, frame)].copy()
        out[data.target] = (frame[data.target].astype(str) == str(data.positive)).astype(np.int8)
        return out

    def model_inputs(self, project: Project, frame: pd.DataFrame) -> list[str]:
        return [c for c in frame.columns if c != project.spec.data.target]

    def decision_threshold(self, project: Project, model: Any) -> float:
        return float(model.decision_threshold)  # chosen for recall at training

    def holdout_metrics(
        self, project: Project, model: Any, features: pd.DataFrame, actual: np.ndarray
    ) -> tuple[np.ndarray, dict[str, float]]:
        score, metrics = super().holdout_metrics(project, model, features, actual)
        metrics.update(model.type_metrics(features[actual == 1]))  # model 2, same holdout
        return score, metrics

    def save(
        self,
        model: Any,
        folder: Path,
        holdout: Holdout,
        run: registry.TrainingRun,
        *,
        requirements: list[str],
    ) -> None:
        from copml.apps.xray.vision import pyfunc

        log_binary_confusion(run, holdout.metrics)
        run.set_tags({"copml.explanation": "attribution maps of model 1 on request"})
        pyfunc.save(model, folder, requirements)

    def register_parts(
        self, project: Project, run_id: str, artifact: str, tags: dict[str, str]
    ) -> dict[str, str]:
        """Each network as its own registered version, named ``<project>-<part>``."""
        folder = f"{artifact}/artifacts/{ARTIFACT}"
        return {
            part: registry.register_part(project, part, run_id, f"{folder}/{sub}", tags)
            for part, sub in _PARTS
        }

    def load(self, path: Path) -> Any:
        from copml.apps.xray.vision import distribution
        from copml.apps.xray.vision.cascade import Cascade
        from copml.serve.champion import input_profile

        cascade = Cascade.load(path / "artifacts" / ARTIFACT)
        cascade.profile = distribution.prepared(input_profile(path))
        return cascade

    def input_profile(self, project: Project, model: Any, holdout: Holdout) -> dict[str, Any]:
        """Mode and colours, size and aspect, grey-level statistics of the training images,
        and model 1's embedding of them, thresholded on the holdout images."""
        from copml.apps.xray.vision import distribution

        return distribution.profile(
            model.detector,
            model.arrays,
            holdout.fit,
            holdout.features,
            false_alarm_rate=project.spec.serving.out_of_distribution.false_alarm_rate,
            seed=holdout.seed,
        )

    def screen(
        self, project: Project, model: Any, profile: dict[str, Any], columns: dict[str, list[Any]]
    ) -> list[tuple[str, ...]]:
        from copml.apps.xray.vision import distribution

        return distribution.unlike(profile, columns, model.detector)

    def warm(self, model: Any, path: Path, features: list[str]) -> None:
        side = model.rules.input_size  # a blank image of its input size
        model.predict(np.zeros((1, side, side), dtype=np.float32))

    def served_models(self, version: str, parts: dict[str, str]) -> dict[str, str]:
        return {"cascade": version, **parts}

    def explain(
        self,
        project: Project,
        prediction_id: str,
        *,
        record: dict[str, Any] | None = None,
        inline: bool = False,
    ) -> dict[str, Any]:
        from copml.apps.xray.explanation import explain_image

        found = {
            "kind": "occlusion attribution map of model 1",
            **explain_image(project, prediction_id).__dict__,
        }
        if inline:
            found["attribution_png"] = base64.b64encode(
                Path(found["attribution_png"]).read_bytes()
            ).decode()
        return found

    def explanation_lines(self, found: dict[str, Any]) -> list[str]:
        region = found["strongest_region"]
        return [
            f"v{found['model_version']}: P(pneumonia) {found['score']:.4f}; strongest evidence "
            f"at x={region['x']:.2f}, y={region['y']:.2f} ({region['log_odds']:+.2f} log-odds)",
            f"attribution map: {found['attribution_png']}",
        ]

    def audit_entries(
        self, project: Project, record: dict[str, Any], *, explanation: bool
    ) -> dict[str, Any]:
        from copml.apps.xray import scoring

        out: dict[str, Any] = {"cascade": scoring.answer(project, record["seq"])}
        if explanation:
            try:
                out["explanation"] = self.explain(project, record["prediction_id"])
            except Exception as exc:  # an audit record is still an audit record
                out["explanation"] = {"unavailable": f"{type(exc).__name__}: {exc}"}
        return out

    def replay_score(self, project: Project, model: Any, record: dict[str, Any]) -> float:
        from copml.apps.xray import scoring
        from copml.apps.xray.vision.images import decode

        image = scoring.image_of(project, record)  # refuses an altered image
        grey, _, _ = decode(image.read_bytes(), model.rules.input_size)
        return float(model.predict(grey[None])["score"].iloc[0])

    def decision_rule(self, project: Project, mv: registry.ModelVersion) -> DecisionRule:
        rules = registry.load(project, mv).rules
        return DecisionRule(
            round(rules.threshold, 4),
            f"model 1 within {rules.review_margin:g} log-odds of its threshold (chosen for "
            f"recall {rules.recall_target:g} on calibration images), or model 2's type "
            f"probability within {rules.type_margin:g} of 0.5, go to a person",
        )

    def decide_rows(self, project: Project, model: Any, columns: dict[str, list[Any]]) -> Decisions:
        decided = model.predict(np.stack(columns["array"]))
        positive = (decided["label"] == model.rules.positive).to_numpy()
        return Decisions(
            positive.astype(np.int8),
            decided["score"].to_numpy(dtype=np.float64),
            decided["review"].to_numpy(dtype=bool),
        )

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
        from copml.apps.xray import api

        limit = image_sets.settings(project.spec.data).max_bytes

        def respond(result: tuple[str, dict[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
            version, models, answers = result
            return {"model_version": version, "models": models, "predictions": answers}

        return PredictApi(
            scorer=api.ImageScorer(project, engine, slot, clock, arms, shadow, halt),
            read=functools.partial(api.read_uploads, max_bytes=limit),
            prepare=lambda uploads, model: api.prepare(
                uploads, model.rules.input_size, limit, api.screening(project, model)
            ),
            respond=respond,
            # One image at its limit, base64 in JSON, must pass; anything larger is refused.
            max_body_bytes=limit * 2,
            openapi=api.OPENAPI,
            description="An x-ray (JSON base64 or multipart 'file') → both networks' answers.",
        )

    def batch_scorer(self) -> Callable[..., Any] | None:
        from copml.apps.xray.scoring import score_folder

        return score_folder

    def declare_data(self, section: dict[str, Any]) -> dict[str, Any]:
        return image_sets.declare(section)

    def snapshot(
        self, engine: Engine, data: Data, *, root: Path, directory: Path, source: str, actor: str
    ) -> Snapshot:
        from copml.apps.xray import image_sets

        return image_sets.create(
            engine, data, root=root, directory=directory, source=source, actor=actor
        )

    def retraining_snapshot(
        self, project: Project, labelled: pd.DataFrame, *, actor: str
    ) -> tuple[Snapshot, int, int] | None:
        from copml.apps.xray import image_sets

        return image_sets.retraining_snapshot(project, labelled, actor=actor)
