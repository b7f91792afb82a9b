"""Where model 1 saw pneumonia in one x-ray decision: an occlusion attribution map of the
very image that was scored (verified by its sha256), by the archived version that scored it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from copml import audit, prediction_log
from copml.apps.xray import scoring
from copml.apps.xray.vision.attribution import occlusion, overlay
from copml.apps.xray.vision.images import decode
from copml.errors import UnknownPrediction
from copml.explain import cache_path
from copml.project import Project
from copml.store import open_store


@dataclass
class ImageExplanation:
    """Model 1's attribution map for one image decision (occlusion sensitivity)."""

    prediction_id: str
    model_version: str
    score: float
    base_log_odds: float
    attribution_png: str
    image_sha256: str
    strongest_region: dict[str, float]


def explain_image(project: Project, prediction_id: str) -> ImageExplanation:
    """Where model 1 saw pneumonia in this x-ray: an overlay PNG (cached), from the very
    image that was scored (verified by its sha256) and the archived version that scored it."""
    record = prediction_log.record(open_store(project.db_url), prediction_id)
    if record is None:
        raise UnknownPrediction(prediction_id)
    version = record["model_version"]
    cached = cache_path(project, prediction_id).with_suffix(".png")
    image = scoring.image_of(project, record)
    cascade = audit.archived_model(project, version)
    grey, _, _ = decode(image.read_bytes(), cascade.rules.input_size)
    heat, base = occlusion(cascade.detector, grey)
    if not cached.exists():
        title = f"prediction {prediction_id} · v{version} · P(pneumonia) {record['score']:.3f}"
        overlay(grey, heat, cached, title)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    side = heat.shape[0]
    return ImageExplanation(
        prediction_id=prediction_id,
        model_version=version,
        score=float(record["score"]),
        base_log_odds=base,
        attribution_png=str(cached),
        image_sha256=record["input"]["sha256"],
        strongest_region={"x": x / side, "y": y / side, "log_odds": float(heat[y, x])},
    )
