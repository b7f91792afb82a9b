"""The alert lifecycle: opened once per key, sent, recorded, closed when its cause is gone.

An alert's ``key`` names its cause (``policy:<name>``, ``approval:<version>``, …). While an
alert with that key is open, opening it again sends nothing: people hear of a problem once,
not at every pass that still sees it. How an alert travels is :mod:`copml.operate.delivery`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from copml import events
from copml.operate import delivery
from copml.project import Project
from copml.store import alerts, json_safe, open_store


def webhook_secret(project: Project) -> bytes:
    """``COPML_WEBHOOK_SECRET`` when set, else derived from the project's secret key."""
    given = os.environ.get("COPML_WEBHOOK_SECRET")
    if given:
        return given.encode()
    return hmac.new(project.pii_key, b"copml-webhook", hashlib.sha256).digest()


def open_alert(
    project: Project,
    key: str,
    title: str,
    details: dict[str, Any],
    at: datetime,
    *,
    severity: str = "warning",
    extra_email: list[str] | None = None,
) -> dict[str, Any]:
    """Send an alert unless one with the same key is still open (de-duplication)."""
    engine = open_store(project.db_url)
    with engine.connect() as conn:
        already = conn.execute(
            select(alerts.c.id).where(alerts.c.key == key, alerts.c.closed_at.is_(None))
        ).first()
    if already is not None:
        return {"deduplicated": True, "alert_id": already.id}
    config = project.spec.alerts
    if extra_email:
        config = config.model_copy(update={"email": sorted({*config.email, *extra_email})})
    alert = delivery.Alert(
        key=key,
        project=project.spec.project,
        title=title,
        severity=severity,
        at=at,
        details=json_safe(details),
    )
    sent = delivery.deliver(alert, config, webhook_secret(project))
    records = [d.__dict__ for d in sent]
    with engine.begin() as conn:
        alert_id = conn.execute(
            insert(alerts).values(
                key=key,
                opened_at=at,
                title=title,
                details=json_safe(details),
                deliveries=records,
            )
        ).inserted_primary_key[0]
        events.record(
            conn,
            events.Kind.ALERT_OPENED,
            actor="system",
            subject=f"alert:{alert_id}",
            reason=title,
            evidence={"key": key, "deliveries": records},
            at=at,
        )
    return {"alert_id": alert_id, "deliveries": records}


def close_alerts(project: Project, key: str, at: datetime, reason: str) -> int:
    """Close the open alerts with ``key``, so that the next occurrence is sent again."""
    with open_store(project.db_url).begin() as conn:
        return close_in(conn, key, at, reason)


def close_in(conn: Connection, key: str, at: datetime, reason: str) -> int:
    """:func:`close_alerts` inside the caller's transaction, so the alerts close with the
    change that ended their cause (an incident reported closes its deadline alerts)."""
    closed = conn.execute(
        update(alerts).where(alerts.c.key == key, alerts.c.closed_at.is_(None)).values(closed_at=at)
    ).rowcount
    if closed:
        events.record(
            conn,
            events.Kind.ALERT_CLOSED,
            actor="system",
            subject=f"alert-key:{key}",
            reason=reason,
            at=at,
        )
    return closed
