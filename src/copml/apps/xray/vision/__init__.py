"""Image data and models for copml's x-ray application (optional extra: copml[vision])."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from copml.apps.xray.vision.cascade import Cascade


def train_cascade(data: pd.DataFrame, params: dict[str, Any], seed: int) -> Cascade:
    """Train the x-ray cascade from copml's training frame (see ``copml.apps.xray.vision.cascade``);
    imported lazily so that copml without the vision extra still starts."""
    from copml.apps.xray.vision.cascade import train_frame

    return train_frame(data, params, seed)
