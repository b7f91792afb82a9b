"""Image data and models for copml's x-ray application (optional extra: copml[vision])."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from copml.metrics import BINARY

if TYPE_CHECKING:
    import pandas as pd

    from copml.apps.xray.vision.cascade import Cascade

# The cascade reports a binary decision (model 1) and how well model 2 types the findings.
CASCADE_METRICS = BINARY.extended(
    "cascade", {"type_accuracy": "higher", "type_balanced_accuracy": "higher"}
)


def train_cascade(data: pd.DataFrame, params: dict[str, Any], seed: int) -> Cascade:
    """Train the x-ray cascade from copml's training frame (see ``copml.apps.xray.vision.cascade``);
    imported lazily so that copml without the vision extra still starts."""
    from copml.apps.xray.vision.cascade import train_frame

    return train_frame(data, params, seed)
