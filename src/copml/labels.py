"""How a target's values are coded in the prediction log and in ground truth.

The log stores every decision as numbers: a class as its position (a binary target's
positive class is 1), a value (a regression's) as itself. A :class:`Target` turns what
people and files say (``"Yes"``, ``"class_1"``, ``151.5``) into those numbers and back, so
feedback, reviews, retraining and the dashboard read every task the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from copml.spec import Data

_BOOLEAN_TEXT = {"1": 1, "0": 0, "true": 1, "false": 0}


@dataclass(frozen=True)
class Target:
    """The coding of one target: ``classes[code]`` is a class as the data spells it; no
    classes means the target is a value (a regression's)."""

    classes: tuple[object, ...] = ()
    aliases: dict[str, int] = field(default_factory=dict)  # other spellings of a class

    @property
    def is_value(self) -> bool:
        return not self.classes

    def encode(self, values: list[object]) -> list[float | None]:
        """The code of each value; None for one that is not a class (or not a finite
        number, for a value target)."""
        if self.is_value:
            return [_number(v) for v in values]
        by_text = {str(c): i for i, c in enumerate(self.classes)}
        out: list[float | None] = []
        for value in values:
            text = str(value).strip()
            code = by_text.get(text, self.aliases.get(text.lower()))
            out.append(None if code is None else float(code))
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes (ground truth or decisions) back to the values the data spells."""
        codes = np.asarray(codes)
        if self.is_value:
            return codes.astype(np.float64)
        return np.asarray(self.classes, dtype=object)[codes.astype(np.int64)]

    def shown(self, label: np.ndarray, score: np.ndarray) -> np.ndarray:
        """What each decision says to a person: its class, or its value."""
        return np.asarray(score, dtype=np.float64) if self.is_value else self.decode(label)

    def show(self, label: int | None, score: float | None = None) -> object:
        """One decision (``label`` a code, ``score`` its value) or one truth (``label`` a
        code, no ``score``) as a person reads it; ``None`` stays unknown."""
        if label is None or (isinstance(label, float) and math.isnan(label)):
            return None
        if self.is_value:
            return label if score is None else score
        return self.classes[int(label)]

    def annotation(self) -> Any:
        """The type of a class or value in a request (feedback, a review's label)."""
        if self.is_value:
            return float
        values: list[Any] = []
        booleans = (True, False) if "true" in self.aliases else ()
        ordered = self.classes[::-1] if booleans else self.classes  # a binary's positive first
        for value in (*ordered, *booleans):  # 1 and True are both kept
            if not any(type(v) is type(value) and v == value for v in values):
                values.append(value)
        return Literal[tuple(values)]  # type: ignore[valid-type]

    def refusal(self) -> str:
        """Why a value was not taken, for a 422 or a file error."""
        if self.is_value:
            return "not a finite number"
        return f"not one of the classes {', '.join(map(str, self.classes))}"


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def class_labels(data: Data) -> tuple[object, object]:
    """(negative, positive) of a binary target: the declared positive and the other
    declared category."""
    column = data.columns[data.target]
    if column.categories and len(column.categories) == 2:
        negative = next(c for c in column.categories if str(c) != str(data.positive))
        return negative, data.positive
    if column.type == "boolean":
        return (not data.positive), data.positive
    return (0 if str(data.positive) == "1" else "not " + str(data.positive)), data.positive


def binary_target(data: Data) -> Target:
    """A binary target: code 1 is the declared positive; ``true``/``false`` and ``1``/``0``
    name the positive and the negative too."""
    return Target(class_labels(data), dict(_BOOLEAN_TEXT))


def decide(
    scores: np.ndarray, threshold: float, band: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(positive, review): the decision at ``threshold``, and whether the score falls in
    the declared uncertainty band that sends it to a human. One rule for batch and API."""
    positive = scores >= threshold
    if band is None:
        return positive, np.zeros(len(scores), dtype=bool)
    return positive, (scores >= band[0]) & (scores < band[1])
