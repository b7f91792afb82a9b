"""How a model is measured, shared by training, the gate, serving, scoring and audit: the
seeded holdout split, scores of the positive class, and the declared minimums.

These live in the core (not in ``train.py``) so that the services that only *use* a model
(serve, score, lifecycle, explain, audit) never import the training service.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from copml import batch_independence
from copml.errors import UserCodeError
from copml.project import Project


def split_holdout(frame: pd.DataFrame, target: str, share: float, seed: int) -> np.ndarray:
    """A seeded holdout mask, stratified by class: the same snapshot and seed give the same
    split.

    Data that names its own split (a ``split`` column, as image sets do: ``train``/``val``)
    is held out as named, so the reported figures are those of the team's evaluation set."""
    from sklearn.model_selection import train_test_split

    if "split" in frame:
        named = frame["split"].notna() & (frame["split"] != "train")
        if named.any() and not named.all():
            return named.to_numpy()

    index = np.arange(len(frame))
    # Classes (coded as integers) are stratified; a value (a regression's float) is not.
    classes = pd.api.types.is_integer_dtype(frame[target]) and frame[target].nunique() > 1
    stratify = frame[target] if classes else None
    _, test = train_test_split(index, test_size=share, random_state=seed, stratify=stratify)
    mask = np.zeros(len(frame), dtype=bool)
    mask[test] = True
    return mask


def positive_scores(model: Any, features: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class (label 1) from a fitted classifier, each row's the
    same whatever else is in ``features`` (see :mod:`copml.batch_independence`); a model that
    says ``score_rows`` is scored that many rows per call."""
    if not hasattr(model, "predict_proba"):
        raise UserCodeError("train() must return a classifier with predict_proba()")
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [0, 1])]
    if sorted(map(str, classes)) != ["0", "1"] or 1 not in classes:
        raise UserCodeError(
            f"its classes are {classes}; a binary model predicts 0/1 with 1 = the positive class"
        )
    column = classes.index(1)
    return batch_independence.model_scores(
        model, lambda scorer, part: scorer.predict_proba(part)[:, column], features
    )


def minimum_failures(project: Project, metrics: dict[str, float]) -> list[str]:
    """The declared effectiveness thresholds this version misses on the holdout."""
    failures = []
    for name, bound in project.spec.effectiveness.thresholds.items():
        value = metrics.get(name, float("nan"))
        if np.isnan(value) or not bound.met(value):
            failures.append(f"{name} = {value:.3f} (needs {bound.model_dump(exclude_none=True)})")
    return failures
