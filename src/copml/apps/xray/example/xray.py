"""The team's code for the x-ray application: copml imports these functions.

copml calls ``train(data, params, seed)`` with the training images as a table: ``file`` (the
archived copy to read), ``path``, ``subtype`` (bacteria / virus / normal), ``group`` (the
patient, when known) and the target ``label`` as 0/1 (1 = pneumonia). It returns the
two-model cascade. The KPI functions get one monitoring window: a row per scored image with
``label`` (1 = pneumonia said), ``score``, ``review`` and ``actual`` (from feedback).
"""

import pandas as pd

from copml.apps.xray.vision import train_cascade


def train(data: pd.DataFrame, params: dict, seed: int):
    return train_cascade(data, params, seed)


def false_negatives(window: pd.DataFrame) -> float:
    """Pneumonia the cascade called normal (known from feedback): the harm to avoid."""
    known = window[window["actual"].notna()]
    return float(((known["actual"] == 1) & (known["label"] == 0)).sum())


def false_negative_rate(window: pd.DataFrame) -> float:
    """Share of confirmed pneumonia cases that were called normal."""
    sick = window[window["actual"] == 1]
    return float((sick["label"] == 0).mean()) if len(sick) else float("nan")


def review_rate(window: pd.DataFrame) -> float:
    """Share of images a radiologist had to look at (human interventions)."""
    return float(window["review"].astype(bool).mean()) if len(window) else float("nan")
