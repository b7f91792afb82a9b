"""Each declared requirement as met, not met or unknown, with the figure that decides it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from copml.monitor.window import Window
from copml.spec import Spec


@dataclass(frozen=True)
class Requirement:
    name: str
    kind: str  # effectiveness | kpi | availability | cost
    expected: str
    value: float
    state: str  # met | not met | unknown


def _state(value: float, ok: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    return "met" if ok else "not met"


def requirements(spec: Spec, window: Window | None) -> list[Requirement]:
    """Evaluate the spec's requirements against a metric window (``None``: all unknown)."""
    metrics = window.metrics if window else {}
    out = []
    for name, bound in spec.effectiveness.thresholds.items():
        value = metrics.get(name, math.nan)
        expected = " and ".join(
            f"{op} {v}" for op, v in ((">=", bound.min), ("<=", bound.max)) if v is not None
        )
        ok = not math.isnan(value) and bound.met(value)
        out.append(Requirement(name, "effectiveness", expected, value, _state(value, ok)))
    for name, kpi in spec.kpis.items():
        value = metrics.get(name, math.nan)
        if kpi.target is None:
            continue
        op = "<=" if kpi.better == "lower" else ">="
        ok = value <= kpi.target if kpi.better == "lower" else value >= kpi.target
        out.append(Requirement(name, "kpi", f"{op} {kpi.target}", value, _state(value, ok)))
    if spec.serving.availability is not None:
        value = metrics.get("availability", math.nan)
        ok = value >= spec.serving.availability
        expected = f">= {spec.serving.availability}"
        out.append(Requirement("availability", "availability", expected, value, _state(value, ok)))
    if spec.costs.budget_per_window is not None:
        value = metrics.get("cost", math.nan)
        ok = value <= spec.costs.budget_per_window
        expected = f"<= {spec.costs.budget_per_window}"
        out.append(Requirement("cost", "cost", expected, value, _state(value, ok)))
    return out
