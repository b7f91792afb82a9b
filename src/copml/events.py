"""The append-only log of every state change, with actor, reason and evidence.

Every service records through :func:`record`, so an audit is a query, not a search.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, select

from copml.store import events


class Kind(StrEnum):
    """Every kind of event copml records, named ``<subject>.<what happened>``.

    A ``str`` enum: stored and compared as its text, so rows read back from the store and
    the kinds written by older copml versions need no conversion.
    """

    MODEL_REGISTERED = "model.registered"
    MODEL_VALIDATED = "model.validated"
    MODEL_REFUSED = "model.refused"
    MODEL_APPROVED = "model.approved"
    MODEL_PROMOTED = "model.promoted"
    MODEL_ROLLED_BACK = "model.rolled_back"
    MODEL_REDEPLOYED = "model.redeployed"
    MODEL_RETIRED = "model.retired"
    MODEL_REPRODUCED = "model.reproduced"
    MODEL_NOT_REPRODUCED = "model.not_reproduced"
    MODEL_ROLLOUT = "model.rollout"  # shadow / canary started, changed or ended
    MODEL_HOLD = "model.hold"
    MODEL_HOLD_RELEASED = "model.hold_released"
    PROJECT_REEVALUATE = "project.reevaluate"
    PROJECT_ACKNOWLEDGED = "project.acknowledged"
    PROJECT_RETIRED = "project.retired"
    PROJECT_HALTED = "project.halted"  # a person stopped it into its safe state (Art. 14)
    PROJECT_RESUMED = "project.resumed"
    POLICY_FIRED = "policy.fired"
    ACTION_RECOVERED = "action.recovered"
    ALERT_OPENED = "alert.opened"
    ALERT_CLOSED = "alert.closed"
    SNAPSHOT_CREATED = "snapshot.created"
    BATCH_SCORED = "batch.scored"
    FEEDBACK_LOADED = "feedback.loaded"
    REVIEW_RESOLVED = "review.resolved"
    PREDICTION_REPLAYED = "prediction.replayed"
    PREDICTIONS_PURGED = "predictions.purged"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"
    SERVE_DEPLOYED = "serve.deployed"
    SERVE_REFUSED = "serve.refused"
    SERVE_STOPPED = "serve.stopped"
    # Serious incidents (Art. 73): subject ``incident:<id>``.
    INCIDENT_OPENED = "incident.opened"
    INCIDENT_UPDATED = "incident.updated"  # a note added
    INCIDENT_REPORTED = "incident.reported"  # to the authority, with its reference
    INCIDENT_CLOSED = "incident.closed"
    INCIDENT_ALERTED = "incident.alerted"  # 50 % or 90 % of the deadline gone, not reported


_MODEL = "model:"


def model_subject(project: str, version: str) -> str:
    """``model:<project>/<version>``: the subject of every event about one model version."""
    return f"{_MODEL}{project}/{version}"


def project_subject(project: str) -> str:
    """``project:<project>``: the subject of events about the project as a whole."""
    return f"project:{project}"


def incident_subject(incident_id: int) -> str:
    """``incident:<id>``: the subject of every event about one serious incident."""
    return f"incident:{incident_id}"


def subject_version(subject: str) -> str:
    """The version a :func:`model_subject` names (project names may hold ``/``)."""
    if not subject.startswith(_MODEL) or "/" not in subject:
        raise ValueError(f"{subject!r} is not a model version's subject")
    return subject.rsplit("/", 1)[1]


def user_actor() -> str:
    """``user:<login>`` for commands a person runs."""
    try:
        return f"user:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "user:unknown"


def record(
    conn: Connection,
    kind: Kind,
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
            kind=Kind(kind).value,  # an undeclared kind fails here, not in an audit
            actor=actor,
            subject=subject,
            reason=reason,
            evidence=evidence,
        )
    )


def history(
    engine: Engine, *, kind: Kind | None = None, subject: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest events first, optionally of one kind or about one subject."""
    query = select(events).order_by(events.c.id.desc()).limit(limit)
    if kind:
        query = query.where(events.c.kind == kind)
    if subject:
        query = query.where(events.c.subject == subject)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def latest(engine: Engine, kind: Kind, subject: str) -> dict[str, Any] | None:
    """The newest event of ``kind`` about ``subject``, if any."""
    found = history(engine, kind=kind, subject=subject, limit=1)
    return found[0] if found else None
