"""The cascade as an MLflow pyfunc model, so MLflow's own tools can load a registered
version too (``mlflow.pyfunc.load_model``); copml itself loads the folder directly."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from copml.apps.xray.vision.cascade import Cascade

ARTIFACT = "cascade"


class CascadeModel(mlflow.pyfunc.PythonModel):
    """Input: a frame with a ``file`` column of image paths; output: the cascade's decisions."""

    def load_context(self, context: Any) -> None:
        self.cascade = Cascade.load(Path(context.artifacts[ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        return self.cascade.predict(self.cascade.arrays(model_input["file"]))


def save(cascade: Cascade, folder: Path, pip_requirements: list[str]) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # copml reports
    with tempfile.TemporaryDirectory() as tmp:
        parts = cascade.save(Path(tmp) / ARTIFACT)
        mlflow.pyfunc.save_model(
            str(folder),
            python_model=CascadeModel(),
            artifacts={ARTIFACT: str(parts)},
            pip_requirements=pip_requirements,
        )
