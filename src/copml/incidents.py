"""Serious incidents (EU AI Act Art. 73): recorded, reported to the market surveillance
authority in time, closed.

An incident is opened with its severity; its legal deadline for the report runs from the
opening time (when the provider became aware): 15 days for a serious incident, 10 days
when a person died, 2 days for a widespread infringement. It is ``open`` until reported
(``reported``, with the authority's reference), then ``closed``; an incident found not to
be serious may be closed unreported, with the reason on record. Every change is an event
about ``incident:<id>`` with actor and reason, so its history is the event log's.

While unreported, the operations tick (:func:`remind`, run by ``copml operate``) alerts
the owners when 50 % and again when 90 % of the time to the deadline has gone: each once,
through the project's alert channels, at the tick's own clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, insert, or_, select
from sqlalchemy import update as sql_update

from copml import events, times
from copml.errors import CopmlError, NotFoundError
from copml.operate.alerts import close_in, open_alert
from copml.project import Project
from copml.store import (
    alerts,
    batches,
    incident_predictions,
    incidents,
    lock_for_writing,
    open_store,
)
from copml.store import events as events_table

SERIOUS, DEATH, WIDESPREAD = "serious", "death", "widespread"
# Art. 73(2)-(4): the longest the report may wait after the provider became aware.
DEADLINES: dict[str, timedelta] = {
    SERIOUS: timedelta(days=15),
    DEATH: timedelta(days=10),
    WIDESPREAD: timedelta(days=2),
}
SEVERITIES = tuple(DEADLINES)
OPEN, REPORTED, CLOSED = "open", "reported", "closed"
# Shares of the time to the deadline (percent) after which an unreported incident alerts.
THRESHOLDS = (50, 90)
MAX_TEXT = 2000
MAX_REFERENCE = 200
MAX_PREDICTIONS = 1000
_KINDS = (
    events.Kind.INCIDENT_OPENED,
    events.Kind.INCIDENT_UPDATED,
    events.Kind.INCIDENT_REPORTED,
    events.Kind.INCIDENT_CLOSED,
    events.Kind.INCIDENT_ALERTED,
)


class Refused(CopmlError):
    """Bad input for an incident; ``field`` names where it came in (the API's 422 says so)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class Conflict(CopmlError):
    """The incident's state does not allow this (reporting a closed incident, …)."""


class UnknownIncident(NotFoundError):
    def __init__(self, incident_id: int) -> None:
        super().__init__(f"no incident {incident_id}")


@dataclass(frozen=True)
class Note:
    """One change of an incident, as the event log holds it."""

    at: datetime
    kind: str
    actor: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Incident:
    id: int
    severity: str
    opened_at: datetime
    deadline: datetime
    state: str
    predictions: tuple[str, ...]
    reason: str
    actor: str
    reported_at: datetime | None
    reference: str | None
    closed_at: datetime | None
    history: tuple[Note, ...] = ()

    def alert_at(self, percent: int) -> datetime:
        """When ``percent`` % of the time from opening to the deadline has gone."""
        return self.opened_at + (self.deadline - self.opened_at) * percent // 100

    def time_left(self, at: datetime) -> timedelta:
        """Until the deadline (negative once overdue)."""
        return self.deadline - times.utc(at)

    @property
    def awaits_report(self) -> bool:
        return self.state == OPEN

    def as_dict(self, at: datetime | None = None) -> dict[str, Any]:
        """Plain JSON; with ``at``, the seconds left to the deadline while unreported."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        out: dict[str, Any] = {
            "id": self.id,
            "severity": self.severity,
            "state": self.state,
            "opened_at": iso(self.opened_at),
            "deadline": iso(self.deadline),
            "predictions": list(self.predictions),
            "reason": self.reason,
            "actor": self.actor,
            "reported_at": iso(self.reported_at),
            "reference": self.reference,
            "closed_at": iso(self.closed_at),
            "history": [
                {"at": iso(n.at), "kind": n.kind, "actor": n.actor, "reason": n.reason}
                for n in self.history
            ],
        }
        if at is not None:
            out["seconds_left"] = self.time_left(at).total_seconds() if self.awaits_report else None
        return out


def deadline_for(severity: str, opened_at: datetime) -> datetime:
    """The legal deadline of an incident of ``severity`` opened at ``opened_at``."""
    return times.utc(opened_at) + DEADLINES[_severity(severity)]


def open_incident(
    engine_or_project: Engine | Project,
    *,
    severity: str,
    predictions: Sequence[str],
    reason: str,
    actor: str,
    at: datetime | None = None,
) -> Incident:
    """Open an incident citing ``predictions`` (ids that must exist; none is allowed for an
    incident about the system as a whole); ``at`` is when the provider became aware
    (default now): the deadline runs from it."""
    severity = _severity(severity)
    why = _text("reason", reason)
    cited = _predictions(predictions)
    opened = times.utc(at or datetime.now(UTC))
    deadline = deadline_for(severity, opened)
    with _engine(engine_or_project).begin() as conn:
        if unknown := _unknown(conn, cited):
            raise Refused("predictions", _unknown_message(cited, unknown))
        incident_id = int(
            conn.execute(
                insert(incidents).values(
                    severity=severity,
                    opened_at=opened,
                    deadline=deadline,
                    state=OPEN,
                    reason=why,
                    actor=actor,
                )
            ).inserted_primary_key[0]
        )
        if cited:
            conn.execute(
                insert(incident_predictions),
                [
                    {"incident_id": incident_id, "position": i, "prediction_id": p}
                    for i, p in enumerate(cited)
                ],
            )
        events.record(
            conn,
            events.Kind.INCIDENT_OPENED,
            actor=actor,
            subject=events.incident_subject(incident_id),
            reason=why,
            evidence={
                "severity": severity,
                "deadline": deadline.isoformat(),
                "predictions": list(cited),
            },
            at=opened,
        )
    return get(engine_or_project, incident_id)


def update(
    engine_or_project: Engine | Project,
    incident_id: int,
    *,
    note: str,
    actor: str,
    at: datetime | None = None,
) -> Incident:
    """Add a note (what was learned, what was done); a closed incident takes no more."""
    text = _text("note", note)

    def check(row: Any) -> None:
        if row.state == CLOSED:
            raise Conflict(f"incident {incident_id} is closed: it takes no more notes")

    return _change(
        engine_or_project, incident_id, events.Kind.INCIDENT_UPDATED, actor, text, at, check, {}, {}
    )


def report(
    engine_or_project: Engine | Project,
    incident_id: int,
    *,
    reference: str,
    actor: str,
    reason: str | None = None,
    at: datetime | None = None,
) -> Incident:
    """Record that the incident was reported to the authority, under its ``reference``;
    its deadline alerts stop (and those still open close)."""
    ref = _text("reference", reference, MAX_REFERENCE)
    why = _text("reason", reason) if reason is not None else f"reported to the authority: {ref}"
    when = times.utc(at or datetime.now(UTC))

    def check(row: Any) -> None:
        if row.state == CLOSED:
            raise Conflict(f"incident {incident_id} is closed: it cannot be reported")
        if row.state == REPORTED:
            raise Conflict(
                f"incident {incident_id} was reported already, on "
                f"{row.reported_at:%Y-%m-%d %H:%M} UTC under reference {row.reference!r}"
            )

    values = {"state": REPORTED, "reported_at": when, "reference": ref}

    def evidence(row: Any) -> dict[str, Any]:
        return {"reference": ref, "deadline": row.deadline.isoformat(), "late": when > row.deadline}

    kind = events.Kind.INCIDENT_REPORTED
    return _change(engine_or_project, incident_id, kind, actor, why, when, check, values, evidence)


def close(
    engine_or_project: Engine | Project,
    incident_id: int,
    *,
    reason: str,
    actor: str,
    at: datetime | None = None,
) -> Incident:
    """Close the incident (reported, or found not to be a serious incident: the reason
    says which); its deadline alerts stop."""
    why = _text("reason", reason)
    when = times.utc(at or datetime.now(UTC))

    def check(row: Any) -> None:
        if row.state == CLOSED:
            raise Conflict(f"incident {incident_id} is closed already")

    values = {"state": CLOSED, "closed_at": when}

    def evidence_of(row: Any) -> dict[str, Any]:
        return {"reported": row.state == REPORTED, "reference": row.reference}

    kind = events.Kind.INCIDENT_CLOSED
    return _change(
        engine_or_project, incident_id, kind, actor, why, when, check, values, evidence_of
    )


def get(engine_or_project: Engine | Project, incident_id: int) -> Incident:
    """One incident with its history; :class:`UnknownIncident` if there is none."""
    found = _read(_engine(engine_or_project), [incidents.c.id == incident_id])
    if not found:
        raise UnknownIncident(incident_id)
    return found[0]


def listed(
    engine_or_project: Engine | Project,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Incident]:
    """Every incident that was open at some time in ``[since, until)`` (opened before
    ``until`` and not closed before ``since``; either bound may be left out), oldest first,
    each with its history. This is the evidence of a period: an incident opened earlier
    and still open during it belongs to it."""
    c = incidents.c
    where = []
    if until is not None:
        where.append(c.opened_at < times.utc(until))
    if since is not None:
        where.append(or_(c.closed_at.is_(None), c.closed_at >= times.utc(since)))
    return _read(_engine(engine_or_project), where)


def in_force(engine_or_project: Engine | Project) -> list[Incident]:
    """The incidents not closed yet (open or reported), oldest first."""
    return _read(_engine(engine_or_project), [incidents.c.state != CLOSED])


def citing(engine_or_project: Engine | Project, prediction_id: str) -> list[Incident]:
    """The incidents that cite ``prediction_id``, oldest first (for its audit record)."""
    cited = select(incident_predictions.c.incident_id).where(
        incident_predictions.c.prediction_id == prediction_id
    )
    return _read(_engine(engine_or_project), [incidents.c.id.in_(cited)])


def alert_key(incident_id: int, percent: int) -> str:
    return f"incident:{incident_id}:{percent}%"


def remind(project: Project, at: datetime) -> list[dict[str, Any]]:
    """Alert on every unreported incident past 50 % or 90 % of its time to the deadline,
    once per threshold: the highest threshold reached is sent unless it (or a higher one)
    was sent before, so a tick that comes late sends one alert, not two. The tick's clock
    ``at`` decides; returns what was sent."""
    at = times.utc(at)
    engine = open_store(project.db_url)
    owners = project.spec.owners
    emails = [
        e
        for e in (owners.data_engineering, owners.data_science, owners.ml_ops, owners.business)
        if e and "@" in e
    ]
    sent = []
    for incident in _read(engine, [incidents.c.state == OPEN]):
        reached = [p for p in THRESHOLDS if at >= incident.alert_at(p)]
        if not reached:
            continue
        top = max(reached)
        keys = [alert_key(incident.id, p) for p in THRESHOLDS if p >= top]
        with engine.connect() as conn:
            if conn.execute(select(alerts.c.id).where(alerts.c.key.in_(keys))).first():
                continue
        title = (
            f"incident {incident.id} ({incident.severity}) is not reported and {top} % of its "
            f"time is gone: report it by {incident.deadline:%Y-%m-%d %H:%M} UTC"
        )
        details = {
            "incident": incident.id,
            "severity": incident.severity,
            "opened_at": incident.opened_at.isoformat(),
            "deadline": incident.deadline.isoformat(),
            "hours_left": round(incident.time_left(at).total_seconds() / 3600, 2),
            "threshold_percent": top,
            "predictions": list(incident.predictions),
        }
        severity = "critical" if top >= 90 else "warning"
        opened = open_alert(
            project,
            alert_key(incident.id, top),
            title,
            details,
            at,
            severity=severity,
            extra_email=emails,
        )
        with engine.begin() as conn:
            events.record(
                conn,
                events.Kind.INCIDENT_ALERTED,
                actor="system",
                subject=events.incident_subject(incident.id),
                reason=title,
                evidence={"threshold_percent": top, "alert_id": opened.get("alert_id")},
                at=at,
            )
        sent.append({"incident": incident.id, "threshold_percent": top, **opened})
    return sent


# -- internals ------------------------------------------------------------------------------


def _engine(engine_or_project: Engine | Project) -> Engine:
    if isinstance(engine_or_project, Project):
        return open_store(engine_or_project.db_url)
    return engine_or_project


def _severity(severity: str) -> str:
    if severity not in DEADLINES:
        raise Refused("severity", f"must be one of {', '.join(SEVERITIES)}, not {severity!r}")
    return severity


def _text(name: str, value: str, longest: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Refused(name, "must not be empty: it is kept on record")
    if len(value) > longest:
        raise Refused(name, f"at most {longest} characters, not {len(value)}")
    return value.strip()


def _predictions(given: Iterable[str]) -> tuple[str, ...]:
    """The ids given, each once, in order; an empty or malformed one is refused."""
    cited = tuple(dict.fromkeys(p.strip() if isinstance(p, str) else p for p in given))
    if len(cited) > MAX_PREDICTIONS:
        raise Refused("predictions", f"at most {MAX_PREDICTIONS} ids, not {len(cited)}")
    return cited


def _unknown(conn: Connection, cited: Sequence[str]) -> list[str]:
    """The ids among ``cited`` that name no stored prediction."""
    from copml.prediction_log import split_id

    parts = {p: split_id(p) for p in cited}
    wanted = sorted({part[0] for part in parts.values() if part is not None})
    sizes: dict[str, int] = {}
    for i in range(0, len(wanted), 500):
        query = select(batches.c.key, batches.c.n_rows).where(
            batches.c.key.in_(wanted[i : i + 500])
        )
        sizes.update((row.key, row.n_rows) for row in conn.execute(query))
    return [
        p for p, part in parts.items() if part is None or not 0 <= part[1] < sizes.get(part[0], 0)
    ]


def _unknown_message(cited: Sequence[str], unknown: list[str]) -> str:
    """Which ids name no prediction: a well-formed one by its id, anything else by its
    position only (it may be any text a client sent)."""
    from copml.prediction_log import split_id

    named = [p for p in unknown if split_id(p) is not None]
    malformed = [str(cited.index(p)) for p in unknown if split_id(p) is None]
    parts = []
    if named:
        parts.append("no prediction " + ", ".join(named[:5]) + (" …" if len(named) > 5 else ""))
    if malformed:
        parts.append(
            f"item {', '.join(malformed[:5])} is not a prediction id (24 lower-case "
            "hexadecimal characters)"
        )
    return "; ".join(parts)


def _change(
    engine_or_project: Engine | Project,
    incident_id: int,
    kind: events.Kind,
    actor: str,
    reason: str,
    at: datetime | None,
    check: Callable[[Any], None],
    values: dict[str, Any],
    evidence: dict[str, Any] | Callable[[Any], dict[str, Any]],
) -> Incident:
    """Check the incident's state and change it in one locked transaction (two people at
    once: the second sees the first's change); the event commits with the change."""
    when = times.utc(at or datetime.now(UTC))
    with _engine(engine_or_project).begin() as conn:
        lock_for_writing(conn)
        query = select(incidents).where(incidents.c.id == incident_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise UnknownIncident(incident_id)
        check(row)
        found = evidence(row) if callable(evidence) else evidence
        if values:
            conn.execute(
                sql_update(incidents).where(incidents.c.id == incident_id).values(**values)
            )
        if values.get("state") in (REPORTED, CLOSED):
            for percent in THRESHOLDS:
                key = alert_key(incident_id, percent)
                close_in(conn, key, when, f"{kind.value}: no more deadline alerts")
        events.record(
            conn,
            kind,
            actor=actor,
            subject=events.incident_subject(incident_id),
            reason=reason,
            evidence=found or None,
            at=when,
        )
    return get(engine_or_project, incident_id)


def _read(engine: Engine, where: list[Any]) -> list[Incident]:
    c = incidents.c
    with engine.connect() as conn:
        rows = conn.execute(select(incidents).where(*where).order_by(c.opened_at, c.id)).all()
        ids = [r.id for r in rows]
        cited: dict[int, list[str]] = {i: [] for i in ids}
        notes: dict[int, list[Note]] = {i: [] for i in ids}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            links = select(incident_predictions).where(
                incident_predictions.c.incident_id.in_(chunk)
            )
            for link in conn.execute(links.order_by(incident_predictions.c.position)):
                cited[link.incident_id].append(link.prediction_id)
            e = events_table.c
            subjects = {events.incident_subject(n): n for n in chunk}
            found = select(e.at, e.kind, e.actor, e.reason, e.evidence, e.subject).where(
                e.subject.in_(list(subjects)), e.kind.in_([k.value for k in _KINDS])
            )
            for ev in conn.execute(found.order_by(e.id)):
                notes[subjects[ev.subject]].append(
                    Note(ev.at, ev.kind, ev.actor, ev.reason or "", ev.evidence or {})
                )
    return [
        Incident(
            id=r.id,
            severity=r.severity,
            opened_at=r.opened_at,
            deadline=r.deadline,
            state=r.state,
            predictions=tuple(cited[r.id]),
            reason=r.reason,
            actor=r.actor,
            reported_at=r.reported_at,
            reference=r.reference,
            closed_at=r.closed_at,
            history=tuple(notes[r.id]),
        )
        for r in rows
    ]
