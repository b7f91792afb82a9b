"""The stop button (EU AI Act Art. 14: the people overseeing a system can halt it into a
safe state). ``copml halt`` records who stopped the project, when and why; servers (within
a second), batch scoring and the policies obey the record until ``copml resume``.

The safe state is the spec's (``oversight.safe_state``): ``review_all`` keeps answering
but flags every decision for a person and queues it (nothing is cleared automatically);
``refuse`` answers 503 with ``Retry-After`` and scores nothing. Policies keep watching
and alerting, but take no automated action while halted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from copml import events
from copml.errors import CopmlError
from copml.project import Project
from copml.spec import Oversight
from copml.store import events as events_table
from copml.store import open_store

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
    with engine.connect() as conn:
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
    if not reason.strip():
        raise CopmlError("--reason: say why the project is halted (it is kept on record)")
    engine = open_store(project.db_url)
    if (now := current(engine, project)) is not None:
        raise CopmlError(f"already halted by {now.actor} at {now.at}: {now.reason}")
    state = declared(project)
    with engine.begin() as conn:
        events.record(
            conn,
            events.Kind.PROJECT_HALTED,
            actor=actor,
            subject=events.project_subject(project.spec.project),
            reason=reason,
            evidence={
                "safe_state": state.safe_state,
                "retry_after_seconds": state.retry_after_seconds,
            },
            at=at,
        )
    found = current(engine, project)
    assert found is not None
    return found


def resume(project: Project, *, actor: str, reason: str, at: datetime | None = None) -> Halt:
    """End the halt in force (not halted: an error); returns the halt that ended."""
    if not reason.strip():
        raise CopmlError("--reason: say why the project may run again (it is kept on record)")
    engine = open_store(project.db_url)
    if (now := current(engine, project)) is None:
        raise CopmlError(f"{project.spec.project} is not halted")
    with engine.begin() as conn:
        events.record(
            conn,
            events.Kind.PROJECT_RESUMED,
            actor=actor,
            subject=events.project_subject(project.spec.project),
            reason=reason,
            evidence={"halted_at": str(now.at), "halted_by": now.actor},
            at=at,
        )
    return now
