"""The stop button (EU AI Act Art. 14: the people overseeing a system can halt it into a
safe state). ``copml halt`` records who stopped the project, when and why; servers (within
a second), batch scoring and the policies obey the record until ``copml resume``.

The safe state is the spec's (``oversight.safe_state``): ``review_all`` keeps answering
but flags every decision for a person and queues it (nothing is cleared automatically);
``refuse`` answers 503 with ``Retry-After`` and scores nothing. Policies keep watching
and alerting, but take no automated action while halted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from copml import events
from copml.errors import CopmlError
from copml.project import Project
from copml.spec import Oversight
from copml.store import events as events_table
from copml.store import lock_for_writing, open_store

REVIEW_ALL, REFUSE = "review_all", "refuse"
# What a policy may still do while halted: tell people, never change the system.
ALLOWED_WHILE_HALTED = frozenset({"alert", "reevaluate"})


@dataclass(frozen=True)
class Halt:
    at: datetime
    actor: str
    reason: str
    safe_state: str
    retry_after_seconds: int

    @property
    def refuses(self) -> bool:
        return self.safe_state == REFUSE


def declared(project: Project) -> Oversight:
    return project.spec.oversight or Oversight()


def current(engine: Engine, project: Project) -> Halt | None:
    """The halt in force, or None: the newest halt or resume decides."""
    with engine.connect() as conn:
        return _in_force(conn, project)


def _in_force(conn: Connection, project: Project) -> Halt | None:
    e = events_table.c
    query = (
        select(e.kind, e.at, e.actor, e.reason, e.evidence)
        .where(
            e.kind.in_([events.Kind.PROJECT_HALTED.value, events.Kind.PROJECT_RESUMED.value]),
            e.subject == events.project_subject(project.spec.project),
        )
        .order_by(e.id.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    if row is None or row.kind != events.Kind.PROJECT_HALTED:
        return None
    found = row.evidence or {}
    return Halt(
        row.at,
        row.actor,
        row.reason,
        str(found.get("safe_state", REVIEW_ALL)),
        int(found.get("retry_after_seconds", 60)),
    )


def halt(project: Project, *, actor: str, reason: str, at: datetime | None = None) -> Halt:
    """Put the project in its declared safe state (already halted: an error naming who)."""
    state = declared(project)
    evidence = {"safe_state": state.safe_state, "retry_after_seconds": state.retry_after_seconds}

    def refusal(now: Halt | None) -> str | None:
        return None if now is None else f"already halted by {now.actor} at {now.at}: {now.reason}"

    _change(project, events.Kind.PROJECT_HALTED, actor, reason, at, refusal, lambda _: evidence)
    found = current(open_store(project.db_url), project)
    assert found is not None
    return found


def resume(project: Project, *, actor: str, reason: str, at: datetime | None = None) -> Halt:
    """End the halt in force (not halted: an error); returns the halt that ended."""

    def refusal(now: Halt | None) -> str | None:
        return f"{project.spec.project} is not halted" if now is None else None

    def evidence(now: Halt | None) -> dict[str, Any]:
        assert now is not None
        return {"halted_at": str(now.at), "halted_by": now.actor}

    ended = _change(project, events.Kind.PROJECT_RESUMED, actor, reason, at, refusal, evidence)
    assert ended is not None
    return ended


def _change(
    project: Project,
    kind: events.Kind,
    actor: str,
    reason: str,
    at: datetime | None,
    refusal: Callable[[Halt | None], str | None],
    evidence: Callable[[Halt | None], dict[str, Any]],
) -> Halt | None:
    """Record a halt or a resume, checked against the halt in force in the same
    transaction (two operators at once: the second is refused); returns that halt."""
    if not reason.strip():
        raise CopmlError("--reason: say why (it is kept on record)")
    with open_store(project.db_url).begin() as conn:
        lock_for_writing(conn)
        now = _in_force(conn, project)
        if (why := refusal(now)) is not None:
            raise CopmlError(why)
        events.record(
            conn,
            kind,
            actor=actor,
            subject=events.project_subject(project.spec.project),
            reason=reason,
            evidence=evidence(now),
            at=at,
        )
    return now
