"""The x-ray cascade: model 1 (normal vs pneumonia, thresholded for recall) then model 2
(bacteria vs virus), with low-confidence results of either routed to a person.

One deployable unit: both networks and the decision rules travel together in one folder
(``detector/``, ``typer/``, ``cascade.json``), so a registered version always names the
pair that made a decision.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from copml import log_epoch
from copml.apps.xray.vision import models
from copml.apps.xray.vision.images import ImageSet, load_arrays

RULES_FILE = "cascade.json"


def _logit(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(clipped / (1 - clipped))


def patient(path: str) -> str:
    """The patient a file belongs to (``person12_…`` / ``IM-0123-…``), for splits that never
    put one patient on both sides; the file name itself otherwise."""
    name = Path(path).name
    found = re.match(r"(person\d+|IM-\d+)", name)
    return found.group(1) if found else name


@dataclass
class Rules:
    """How scores become decisions."""

    threshold: float  # model 1: pneumonia when score >= threshold (chosen for recall)
    recall_target: float
    calibration_recall: float
    calibration_specificity: float
    # Model 1 within this many log-odds of its threshold → a person looks. In log-odds, not
    # probability: a threshold chosen for 98 % recall sits near 0.05, where ±0.1 would send
    # most normal images to review.
    review_margin: float = 1.0
    type_margin: float = 0.15  # model 2 within this of 0.5 → a person looks
    input_size: int = 64
    positive: str = "PNEUMONIA"
    negative: str = "NORMAL"
    subtypes: tuple[str, str] = ("bacteria", "virus")  # model 2's 0 and 1


@dataclass
class Cascade:
    detector: Any
    typer: Any
    rules: Rules
    # What its training images looked like (vision.distribution), read from the version's
    # model folder on load: requests unlike them go to a person. Not part of ``save``.
    profile: dict[str, Any] | None = None

    # The estimator face copml's training, gate and batch scoring use: a frame with a ``file``
    # column in, P(pneumonia) out, decided at the cascade's own threshold.
    classes_ = (0, 1)
    # One image per call, as its networks score (copml.batch_independence): a frame of many
    # files is not loaded and padded only to be split again.
    score_rows = 1

    @property
    def decision_threshold(self) -> float:
        return self.rules.threshold

    def arrays(self, files: list[str] | pd.Series) -> np.ndarray:
        """The files as the networks' input (grey, resized the same way as in training)."""
        listed = ImageSet(pd.DataFrame({"path": [Path(f) for f in files]}), Path("/"))
        return load_arrays(listed, self.rules.input_size)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        score = models.predict_proba(self.detector, self.arrays(frame["file"]))
        return np.column_stack([1 - score, score])

    def type_metrics(self, frame: pd.DataFrame) -> dict[str, float]:
        """Model 2 on the frame's pneumonia images with a known subtype."""
        typed = frame[frame["subtype"].isin(self.rules.subtypes)]
        if typed.empty or typed["subtype"].nunique() < 2:
            return {"type_accuracy": float("nan"), "type_balanced_accuracy": float("nan")}
        kind = (typed["subtype"] == self.rules.subtypes[1]).to_numpy().astype(np.int64)
        scores = models.predict_proba(self.typer, self.arrays(typed["file"]))
        found = models.metrics(kind, scores, 0.5)
        return {
            "type_accuracy": float(found["accuracy"]),
            "type_balanced_accuracy": float(found["balanced_accuracy"]),
        }

    def predict(self, images: np.ndarray) -> pd.DataFrame:
        """Per image: pneumonia score and label, type and its probability, review flag."""
        r = self.rules
        score = models.predict_proba(self.detector, images)
        positive = score >= r.threshold
        type_score = models.predict_proba(self.typer, images)  # P(second subtype)
        kind = np.where(type_score >= 0.5, r.subtypes[1], r.subtypes[0])
        type_probability = np.where(type_score >= 0.5, type_score, 1 - type_score)
        unsure = np.abs(_logit(score) - _logit(np.asarray(r.threshold))) < r.review_margin
        unsure_type = positive & (np.abs(type_score - 0.5) < r.type_margin)
        return pd.DataFrame(
            {
                "score": score,
                "label": np.where(positive, r.positive, r.negative),
                "type": np.where(positive, kind, None),
                "type_probability": np.where(positive, type_probability, np.nan),
                "review": unsure | unsure_type,
            }
        )

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        models.save(self.detector, folder / "detector")
        models.save(self.typer, folder / "typer")
        (folder / RULES_FILE).write_text(json.dumps(asdict(self.rules), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path) -> Cascade:
        folder = Path(folder)
        raw = json.loads((folder / RULES_FILE).read_text())
        raw["subtypes"] = tuple(raw["subtypes"])
        return cls(models.load(folder / "detector"), models.load(folder / "typer"), Rules(**raw))


def _split_by_patient(frame: pd.DataFrame, share: float, seed: int) -> np.ndarray:
    """A boolean mask of the calibration part: ``share`` of the patients, seeded."""
    if "group" in frame and frame["group"].notna().all():
        who = frame["group"].astype(str)
    else:
        who = frame["path"].map(lambda p: patient(str(p)))
    patients = np.array(sorted(set(who)))
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(patients, size=max(1, int(len(patients) * share)), replace=False))
    return who.isin(chosen).to_numpy()


@dataclass
class Detector:
    """Model 1 and the threshold chosen for it on the calibration part of its training set."""

    model: Any
    threshold: float
    calibration_recall: float
    calibration_specificity: float
    calibration: np.ndarray  # which training images were held out to choose the threshold


def train_detector(
    frame: pd.DataFrame,
    arrays: np.ndarray,
    is_positive: np.ndarray,
    *,
    seed: int = 42,
    recall_target: float = 0.98,
    calibration_share: float = 0.2,
    epochs: int = 8,
    init_weights: Path | None = None,
    threads: int | None = None,
    max_steps: int | None = models.STEP_BUDGET,
) -> Detector:
    """Model 1 (normal vs pneumonia) on the images of ``frame``, its threshold the highest that
    keeps ``recall_target`` on a patient-disjoint calibration part, never on evaluation data.
    ``threads``: torch's CPU threads for the training (see ``models.train_cnn``)."""
    calibration = _split_by_patient(frame, calibration_share, seed)
    # The learning curve's validation: at most 256 of the calibration images (seeded).
    held = np.flatnonzero(calibration)
    held = np.random.default_rng(seed).permutation(held)[:256]
    epochs = models.capped_epochs(epochs, int((~calibration).sum()), max_steps)
    model = models.train_cnn(
        arrays[~calibration],
        is_positive[~calibration].astype(np.int64),
        seed=seed,
        epochs=epochs,
        init_weights=init_weights,
        threads=threads,
        validation=(arrays[held], is_positive[held].astype(np.int64)),
        progress=lambda epoch, figures: log_epoch("detector", epoch, epochs, figures),
    )
    scores = models.predict_proba(model, arrays[calibration])
    threshold, recall, specificity = models.threshold_for_recall(
        scores, is_positive[calibration].astype(np.int64), recall_target
    )
    return Detector(model, float(threshold), float(recall), float(specificity), calibration)


def train(
    images: ImageSet,
    *,
    seed: int = 42,
    recall_target: float = 0.98,
    calibration_share: float = 0.2,
    epochs: int = 8,
    type_epochs: int = 10,
    size: int = 64,
    positive: str = "PNEUMONIA",
    negative: str = "NORMAL",
    init_weights: Path | None = None,
    review_margin: float = 1.0,
    type_margin: float = 0.15,
    threads: int | None = None,
    max_steps: int | None = models.STEP_BUDGET,
    type_max_steps: int | None = models.TYPE_STEP_BUDGET,
) -> tuple[Cascade, dict[str, Any]]:
    """Train both models on ``images``; model 1's threshold comes from a calibration part of
    the training set (by patient), never from the data it is evaluated on. ``threads``:
    torch's CPU threads for both trainings (see ``models.train_cnn``)."""
    frame = images.frame.reset_index(drop=True)
    arrays = load_arrays(images, size=size)
    is_positive = (frame["label"] == positive).to_numpy()
    detector = train_detector(
        frame,
        arrays,
        is_positive,
        seed=seed,
        recall_target=recall_target,
        calibration_share=calibration_share,
        epochs=epochs,
        init_weights=init_weights,
        threads=threads,
        max_steps=max_steps,
    )
    subtypes = ("bacteria", "virus")
    typed = is_positive & frame["subtype"].isin(subtypes).to_numpy()
    is_virus = (frame.loc[typed, "subtype"] == subtypes[1]).to_numpy().astype(np.int64)
    type_epochs = models.capped_epochs(type_epochs, int(typed.sum()), type_max_steps)
    typer = models.train_cnn(
        arrays[typed],
        is_virus,
        seed=seed,
        epochs=type_epochs,
        threads=threads,
        progress=lambda epoch, figures: log_epoch("typer", epoch, type_epochs, figures),
    )
    rules = Rules(
        threshold=detector.threshold,
        recall_target=recall_target,
        calibration_recall=detector.calibration_recall,
        calibration_specificity=detector.calibration_specificity,
        review_margin=review_margin,
        type_margin=type_margin,
        input_size=size,
        positive=positive,
        negative=negative,
        subtypes=subtypes,
    )
    report = {
        "fit_images": int((~detector.calibration).sum()),
        "calibration_images": int(detector.calibration.sum()),
        "threshold": detector.threshold,
        "calibration_recall": detector.calibration_recall,
        "calibration_specificity": detector.calibration_specificity,
        "type_images": int(typed.sum()),
    }
    return Cascade(detector.model, typer, rules), report


def train_frame(
    data: pd.DataFrame, params: dict[str, Any], seed: int, *, target: str = "label"
) -> Cascade:
    """The cascade from copml's training frame (``file``, ``subtype``, ``group``, target 0/1):
    what a project's ``train(data, params, seed)`` returns for ``task: cascade``.

    ``params``: recall_target, calibration_share, epochs, type_epochs, size, init_weights
    (a local state_dict for transfer learning), review_margin (log-odds around model 1's
    threshold) and type_margin (model 2's probability around 0.5) that send a case to review,
    threads (torch's CPU threads for training: fixed, a retraining reproduces the weights),
    max_steps and type_max_steps (model 1's and model 2's epochs at most enough for this many
    optimiser steps, defaults ``models.STEP_BUDGET`` and ``TYPE_STEP_BUDGET``; 0 for none: a
    large set needs fewer passes than a small one).
    """
    frame = pd.DataFrame(
        {
            "path": data["file"].astype(str),
            "label": np.where(data[target].to_numpy() == 1, Rules.positive, Rules.negative),
            "subtype": data.get("subtype"),
        }
    )
    if "group" in data:
        frame["group"] = data["group"].to_numpy()
    weights = params.get("init_weights")
    cascade, _ = train(
        ImageSet(frame, Path("/")),
        seed=seed,
        recall_target=float(params.get("recall_target", 0.98)),
        calibration_share=float(params.get("calibration_share", 0.2)),
        epochs=int(params.get("epochs", 8)),
        type_epochs=int(params.get("type_epochs", 10)),
        size=int(params.get("size", models.SIZE)),
        init_weights=Path(weights) if weights else None,
        review_margin=float(params.get("review_margin", 1.0)),
        type_margin=float(params.get("type_margin", 0.15)),
        threads=int(params["threads"]) if params.get("threads") else None,
        max_steps=int(params.get("max_steps", models.STEP_BUDGET)) or None,
        type_max_steps=int(params.get("type_max_steps", models.TYPE_STEP_BUDGET)) or None,
    )
    return cascade


def evaluate(cascade: Cascade, images: ImageSet) -> dict[str, float]:
    """Model 1 and model 2 figures on a labelled set (e.g. ``val/``)."""
    frame = images.frame.reset_index(drop=True)
    arrays = load_arrays(images, size=cascade.rules.input_size)
    r = cascade.rules
    actual = (frame["label"] == r.positive).to_numpy().astype(np.int64)
    detected = models.metrics(actual, models.predict_proba(cascade.detector, arrays), r.threshold)
    typed = (frame["label"] == r.positive).to_numpy() & frame["subtype"].isin(r.subtypes)
    kind = (frame.loc[typed, "subtype"] == r.subtypes[1]).to_numpy().astype(np.int64)
    typing = models.metrics(
        kind, models.predict_proba(cascade.typer, arrays[typed.to_numpy()]), 0.5
    )
    return {
        **{f"model1_{k}": float(v) for k, v in detected.items()},
        **{f"model2_{k}": float(v) for k, v in typing.items()},
    }
