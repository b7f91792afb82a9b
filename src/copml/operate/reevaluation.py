"""The re-evaluation flag: a policy says the project itself may be wrong, a person decides.

While the flag is up, no policy retrains automatically (more of the same model cannot answer
"is this still the right model?"); an owner's acknowledgement lowers it. Both are events on
the project's subject, so the flag's state is a query of the history.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from copml import events
from copml.errors import CopmlError
from copml.operate import alerts
from copml.project import Project
from copml.store import open_store


def _subject(project: Project) -> str:
    return events.project_subject(project.spec.project)


def suspended(engine: Engine, project: Project) -> dict[str, Any] | None:
    """The re-evaluation flag, while no owner has acknowledged it."""
    flagged = events.latest(engine, events.Kind.PROJECT_REEVALUATE, _subject(project))
    if flagged is None:
        return None
    acked = events.latest(engine, events.Kind.PROJECT_ACKNOWLEDGED, _subject(project))
    return flagged if acked is None or acked["id"] < flagged["id"] else None


def flag(
    project: Project, *, actor: str, reason: str, evidence: dict[str, Any], at: datetime
) -> None:
    """Raise the flag: automated retraining stops until an owner acknowledges."""
    with open_store(project.db_url).begin() as conn:
        events.record(
            conn,
            events.Kind.PROJECT_REEVALUATE,
            actor=actor,
            subject=_subject(project),
            reason=reason,
            evidence=evidence,
            at=at,
        )


def acknowledge(project: Project, *, actor: str, reason: str, at: datetime | None = None) -> None:
    """An owner acknowledges the re-evaluation flag: automated retraining may resume."""
    engine = open_store(project.db_url)
    if suspended(engine, project) is None:
        raise CopmlError("the project is not flagged for re-evaluation")
    with engine.begin() as conn:
        events.record(
            conn,
            events.Kind.PROJECT_ACKNOWLEDGED,
            actor=actor,
            subject=_subject(project),
            reason=reason,
            at=at,
        )
    for policy in project.spec.policies:
        if "reevaluate" in policy.do:
            alerts.close_alerts(
                project,
                f"reevaluate:{policy.name}",
                at or datetime.now(UTC),
                f"acknowledged by {actor}",
            )
