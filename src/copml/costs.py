"""What the model costs to run: compute time recorded by every process, priced per window.

A project that meets its KPI at too high a cost still fails (COPML): training, scoring,
serving and operating record their CPU time; the window's cost adds the human reviews
and the fixed monthly cost at the declared rates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from copml.spec import Costs
from copml.store import usage

_MONTH_DAYS = 365.25 / 12


def record(
    engine: Engine,
    kind: str,
    cpu_seconds: float,
    *,
    at: datetime | None = None,
    detail: str | None = None,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            usage.insert().values(
                at=at or datetime.now(UTC), kind=kind, cpu_seconds=cpu_seconds, detail=detail
            )
        )


@contextmanager
def metered(
    engine: Engine, kind: str, *, at: datetime | None = None, detail: str | None = None
) -> Iterator[None]:
    """Record the CPU time (all threads of this process) spent in the block, even if it fails."""
    began = time.process_time()
    try:
        yield
    finally:
        record(engine, kind, time.process_time() - began, at=at, detail=detail)


def declared(costs: Costs) -> bool:
    return any((costs.cpu_hour, costs.review, costs.monthly_fixed))


def window_cost(
    engine: Engine, costs: Costs, start: datetime, end: datetime, reviews: float
) -> tuple[float, dict[str, float]]:
    """(cost, breakdown) of ``[start, end)``; NaN when the spec declares no rates."""
    with engine.connect() as conn:
        cpu = conn.execute(
            select(func.coalesce(func.sum(usage.c.cpu_seconds), 0.0)).where(
                usage.c.at >= start, usage.c.at < end
            )
        ).scalar_one()
    days = (end - start).total_seconds() / 86400
    parts = {
        "compute": float(cpu) / 3600 * costs.cpu_hour,
        "reviews": (0.0 if math.isnan(reviews) else reviews) * costs.review,
        "fixed": costs.monthly_fixed * days / _MONTH_DAYS,
    }
    if not declared(costs):
        return math.nan, parts
    return sum(parts.values()), parts
