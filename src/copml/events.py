"""The append-only log of every state change, with actor, reason and evidence.

Every service records through :func:`record`, so an audit is a query, not a search.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from copml.store import events


def user_actor() -> str:
    """``user:<login>`` for commands a person runs."""
    try:
        return f"user:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "user:unknown"


def record(
    conn: Connection,
    kind: str,
    *,
    actor: str,
    subject: str | None = None,
    reason: str | None = None,
    evidence: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Append an event inside the caller's transaction, so it commits with the change."""
    conn.execute(
        events.insert().values(
            at=at or datetime.now(UTC),
            kind=kind,
            actor=actor,
            subject=subject,
            reason=reason,
            evidence=evidence,
        )
    )


def history(
    engine: Engine, *, kind: str | None = None, subject: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest events first, optionally of one kind or about one subject."""
    query = select(events).order_by(events.c.id.desc()).limit(limit)
    if kind:
        query = query.where(events.c.kind == kind)
    if subject:
        query = query.where(events.c.subject == subject)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def latest(engine: Engine, kind: str, subject: str) -> dict[str, Any] | None:
    """The newest event of ``kind`` about ``subject``, if any."""
    found = history(engine, kind=kind, subject=subject, limit=1)
    return found[0] if found else None
