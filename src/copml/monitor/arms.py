"""A window's figures per arm of a rollout: champion, canary and shadow side by side.

During a rollout the window's headline figures stay those of what was answered (champion
and canary together); beside them each arm gets the task's metrics, estimates and counts
under its name (``canary.recall``, ``shadow.estimated_accuracy``), so that a policy can
compare them (``canary.recall >= champion.recall - 0.01 for 2 windows``). A shadow's rows
take their truth from the answered rows they shadow (the feedback names the answered
prediction), and its agreement with the answers is known before any truth lands.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from copml import prediction_log
from copml.kinds import kind_for
from copml.project import Project
from copml.rollout import AGREEMENT, ARM_COUNTS, CANARY, CHAMPION, SHADOW

_DECIDED = ("label", "score", "review", "actual", "probabilities", "model_version")


def shadow_frame(engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """The shadow's decisions made in ``[start, end)``, each with ``answered_seq``: the
    answered prediction of the same request row (a shadow batch's row i shadows row i of
    the batch it names)."""
    made = prediction_log.batches_between(engine, start, end)
    answered = {b.key: b for b in made if b.arm != SHADOW}
    found = sorted(
        (b for b in made if b.arm == SHADOW and b.shadows in answered), key=lambda b: b.first_seq
    )
    if not found:
        return pd.DataFrame(
            columns=["seq", "label", "score", "review", "answered_seq", "model_version"]
        )
    frame, owner = prediction_log.batches_decisions(engine, found)
    offset = np.array([answered[b.shadows].first_seq - b.first_seq for b in found])  # type: ignore[index]
    frame["answered_seq"] = frame["seq"].to_numpy() + offset[owner]
    frame["model_version"] = np.array([b.model_version for b in found], dtype=object)[owner]
    return frame.drop(columns=["actual"])


def arm_metrics(
    project: Project,
    frame: pd.DataFrame,
    shadow: pd.DataFrame,
    calibration_of: Callable[[str], dict[str, Any] | None],
) -> dict[str, float]:
    """Each arm's figures over the window's answered rows (``frame``, with ``arm``) and
    its shadow rows. When the champion ran alone, only the counts (each challenger's 0):
    a policy can say "no rollout runs" (``shadow.predictions == 0``)."""
    arm = frame["arm"]
    if not len(frame):
        answered_arms: set[str] = set()
    elif isinstance(arm.dtype, pd.CategoricalDtype):  # codes, not 10,000,000 strings
        answered_arms = {str(a) for a in arm.cat.categories[np.unique(arm.cat.codes)]}
    else:
        answered_arms = set(arm.astype(str).unique())
    if not len(shadow) and answered_arms <= {CHAMPION}:
        counts = {f"{arm}.{name}": 0.0 for arm in (CANARY, SHADOW) for name in ARM_COUNTS}
        counts[f"{CHAMPION}.predictions"] = float(len(frame))
        counts[f"{CHAMPION}.labelled"] = float(frame["actual"].notna().sum()) if len(frame) else 0.0
        return counts
    decided = [c for c in _DECIDED if c in frame]
    found: dict[str, float] = {}
    for arm in (CHAMPION, CANARY):
        rows = frame.loc[(frame["arm"] == arm).to_numpy(), decided]
        found.update(_figures(project, arm, rows, calibration_of))
    seq = frame["seq"].to_numpy()
    at = np.searchsorted(seq, shadow["answered_seq"].to_numpy()) if len(shadow) else np.zeros(0)
    at = np.minimum(at, max(len(seq) - 1, 0)).astype(np.int64)
    matched = seq[at] == shadow["answered_seq"].to_numpy() if len(seq) else np.zeros(0, dtype=bool)
    shadow = shadow[matched]
    answered = frame.iloc[at[matched]]
    rows = pd.DataFrame(
        {
            "label": shadow["label"].to_numpy(),
            "score": shadow["score"].to_numpy(dtype=np.float64),
            "review": shadow["review"].to_numpy(dtype=bool),
            "actual": answered["actual"].to_numpy(),
            "model_version": shadow["model_version"].to_numpy(),
        }
    )
    found.update(_figures(project, SHADOW, rows, calibration_of))
    found.update(_agreement(rows, answered))
    return found


def _figures(
    project: Project,
    arm: str,
    rows: pd.DataFrame,
    calibration_of: Callable[[str], dict[str, Any] | None],
) -> dict[str, float]:
    spec = project.spec
    kind = kind_for(spec)
    names = spec.metrics.names(spec.classes)
    figures: dict[str, float] = dict.fromkeys(names, math.nan)
    known = rows["actual"].notna().to_numpy()
    if known.any():
        figures.update(kind.window_metrics(project, rows[known]))
    if len(rows) and spec.metrics.estimated:
        versions = map(str, pd.unique(rows["model_version"].astype(str)))
        calibrations: Mapping[str, dict[str, Any] | None] = {v: calibration_of(v) for v in versions}
        figures.update(kind.estimate(project, rows, calibrations))
    figures.update(zip(ARM_COUNTS, (float(len(rows)), float(known.sum())), strict=True))
    return {f"{arm}.{name}": float(value) for name, value in figures.items()}


def _agreement(shadow: pd.DataFrame, answered: pd.DataFrame) -> dict[str, float]:
    """How the shadow's decisions compare with the answers on the same rows."""
    found = dict.fromkeys((f"{SHADOW}.{name}" for name in AGREEMENT), math.nan)
    if not len(shadow):
        return found
    mine = shadow["score"].to_numpy(dtype=np.float64)
    theirs = answered["score"].to_numpy(dtype=np.float64)
    equal = shadow["label"].to_numpy() == answered["label"].to_numpy()
    spread = len(mine) > 1 and np.std(mine) > 0 and np.std(theirs) > 0
    values = (
        float(np.mean(equal)),
        float(np.corrcoef(mine, theirs)[0, 1]) if spread else math.nan,
        float(np.mean(np.abs(mine - theirs))),
    )
    found.update(zip((f"{SHADOW}.{name}" for name in AGREEMENT), values, strict=True))
    return found
