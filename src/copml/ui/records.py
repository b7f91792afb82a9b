"""Read-only views of the store that the dashboard lists and no service lists yet:
open alerts, each policy's latest evaluation, and the event log filtered by actor."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from copml import prediction_log
from copml.store import alerts, events, policy_evaluations


def open_alerts(engine: Engine) -> list[dict[str, Any]]:
    """Alerts still open (their condition holds), newest first."""
    query = select(alerts).where(alerts.c.closed_at.is_(None)).order_by(alerts.c.opened_at.desc())
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def latest_evaluations(engine: Engine) -> dict[str, dict[str, Any]]:
    """Each policy's most recent evaluation, by policy name."""
    e = policy_evaluations.c
    newest = select(func.max(e.id)).group_by(e.policy).scalar_subquery()
    query = select(policy_evaluations).where(e.id.in_(newest))
    with engine.connect() as conn:
        return {r.policy: dict(r._mapping) for r in conn.execute(query)}


def event_page(
    engine: Engine,
    *,
    actor: str | None = None,
    kind: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Events newest first, optionally by one actor and of one kind, older than ``before``."""
    query = select(events).order_by(events.c.id.desc()).limit(limit)
    if actor:
        query = query.where(events.c.actor == actor)
    if kind:
        query = query.where(events.c.kind == kind)
    if before is not None:
        query = query.where(events.c.id < before)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def event_facets(engine: Engine) -> tuple[list[str], list[str]]:
    """The actors and the kinds present in the log, for the filter lists."""
    with engine.connect() as conn:
        actors = conn.execute(select(events.c.actor).distinct().order_by(events.c.actor))
        kinds = conn.execute(select(events.c.kind).distinct().order_by(events.c.kind))
        return list(actors.scalars()), list(kinds.scalars())


def events_between(
    engine: Engine, kinds: tuple[str, ...], start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Events of ``kinds`` in ``[start, end]``, oldest first: the marks on a timeline."""
    query = (
        select(events)
        .where(events.c.kind.in_(kinds), events.c.at >= start, events.c.at <= end)
        .order_by(events.c.at, events.c.id)
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def predictions_between(
    engine: Engine, start: datetime | None, end: datetime, limit: int = 100
) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` predictions made in ``[start, end)``, newest batch first, and how
    many there are in all."""
    found = prediction_log.batches_between(engine, start, end)[::-1]
    rows: list[dict[str, Any]] = []
    for batch in found:
        if len(rows) >= limit:
            break
        frame = prediction_log.read(engine, batch).head(limit - len(rows))
        for r in frame.itertuples(index=False):
            rows.append(
                {
                    "prediction_id": r.prediction_id,
                    "created_at": batch.created_at,
                    "model_version": batch.model_version,
                    "origin": batch.origin,
                    "label": int(r.label),
                    "score": float(r.score),
                    "review": bool(r.review),
                    "actual": None if r.actual != r.actual else int(r.actual),
                }
            )
    return rows, sum(b.n_rows for b in found)
