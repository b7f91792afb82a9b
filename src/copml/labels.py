"""The two class labels of a binary target as the data spells them."""

from __future__ import annotations

import numpy as np

from copml.spec import Data

_BOOLEAN_TEXT = {"1": 1, "0": 0, "true": 1, "false": 0}


def class_labels(data: Data) -> tuple[object, object]:
    """(negative, positive): the declared positive and the other declared category."""
    column = data.columns[data.target]
    if column.categories and len(column.categories) == 2:
        negative = next(c for c in column.categories if str(c) != str(data.positive))
        return negative, data.positive
    if column.type == "boolean":
        return (not data.positive), data.positive
    return (0 if str(data.positive) == "1" else "not " + str(data.positive)), data.positive


def decide(
    scores: np.ndarray, threshold: float, band: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(positive, review): the decision at ``threshold``, and whether the score falls in
    the declared uncertainty band that sends it to a human. One rule for batch and API."""
    positive = scores >= threshold
    if band is None:
        return positive, np.zeros(len(scores), dtype=bool)
    return positive, (scores >= band[0]) & (scores < band[1])


def encode_actual(values: list[object], data: Data) -> list[int | None]:
    """1 for the positive label, 0 for the negative one, None for anything else."""
    negative, positive = class_labels(data)
    out: list[int | None] = []
    for value in values:
        text = str(value).strip()
        if text == str(positive):
            out.append(1)
        elif text == str(negative):
            out.append(0)
        else:
            out.append(_BOOLEAN_TEXT.get(text.lower()))
    return out
