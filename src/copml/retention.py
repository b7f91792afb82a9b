"""``copml purge``: prediction records past the declared retention are deleted (GDPR's
storage limitation), except those of versions under audit hold; what was deleted is an
event. Metric windows stay: they are aggregates, not records about a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Column, Table, delete, select

from copml import events, times
from copml.errors import CopmlError
from copml.project import Project
from copml.store import (
    applications,
    batches,
    class_probabilities,
    feedback,
    idempotency_keys,
    lock_for_writing,
    open_store,
    prediction_inputs,
    predictions,
    reviews,
    snapshots,
)


def _subject(project: Project, version: str) -> str:
    return events.model_subject(project.spec.project, version)


def held_versions(project: Project) -> set[str]:
    """Versions whose latest hold event is a hold, not a release."""
    engine = open_store(project.db_url)
    latest: dict[str, tuple[int, str]] = {}
    for kind in (events.Kind.MODEL_HOLD, events.Kind.MODEL_HOLD_RELEASED):
        for ev in events.history(engine, kind=kind, limit=100_000):
            version = events.subject_version(ev["subject"])
            if ev["id"] > latest.get(version, (0, ""))[0]:
                latest[version] = (ev["id"], kind)
    return {v for v, (_, kind) in latest.items() if kind == events.Kind.MODEL_HOLD}


def hold(project: Project, version: str, *, actor: str, reason: str, release: bool = False) -> None:
    """Put a version's prediction records under audit hold (or release them)."""
    if not reason.strip():
        raise CopmlError("say why: --reason TEXT")
    with open_store(project.db_url).begin() as conn:
        events.record(
            conn,
            events.Kind.MODEL_HOLD_RELEASED if release else events.Kind.MODEL_HOLD,
            actor=actor,
            subject=_subject(project, version),
            reason=reason,
        )


@dataclass
class Purge:
    cutoff: datetime
    batches: int
    predictions: int
    snapshots: int
    kept_on_hold: int
    freed_bytes: int


def _prediction_records() -> list[tuple[Table, Column[Any]]]:
    """Every table of records about a prediction and its seq column, children first: the
    core's and each application's own (found by their foreign key to ``predictions``)."""
    owned = [
        (table, fk.parent)
        for app in applications()
        for table in app.tables
        for fk in table.foreign_keys
        if fk.column is predictions.c.seq
    ]
    return [
        (idempotency_keys, idempotency_keys.c.seq),
        (feedback, feedback.c.prediction_seq),
        (reviews, reviews.c.seq),
        (class_probabilities, class_probabilities.c.seq),
        *owned,
        (prediction_inputs, prediction_inputs.c.seq),
        (predictions, predictions.c.seq),
    ]


def purge(project: Project, *, actor: str, at: datetime | None = None) -> Purge:
    """Delete prediction records older than ``retention.predictions`` before ``at``."""
    now = times.utc(at) if at is not None else datetime.now(UTC)
    cutoff = (pd.Timestamp(now) - project.spec.retention.predictions.offset()).to_pydatetime()
    engine = open_store(project.db_url)
    held = held_versions(project)
    b = batches.c
    with engine.begin() as conn:
        lock_for_writing(conn)
        old = conn.execute(select(batches).where(b.created_at < cutoff)).all()
        kept = sum(r.n_rows for r in old if r.model_version in held)
        doomed = [r for r in old if r.model_version not in held]
        n = 0
        for r in doomed:
            last = r.first_seq + r.n_rows - 1
            for table, column in _prediction_records():
                conn.execute(delete(table).where(column.between(r.first_seq, last)))
            n += r.n_rows
        conn.execute(delete(batches).where(b.id.in_([r.id for r in doomed])))
        # Input snapshots of purged batches that no remaining batch refers to.
        candidates = {r.snapshot_id for r in doomed if r.snapshot_id}
        still = set(
            conn.execute(select(b.snapshot_id).where(b.snapshot_id.in_(candidates))).scalars()
        )
        gone = conn.execute(
            select(snapshots.c.id, snapshots.c.path).where(
                snapshots.c.id.in_(candidates - still), snapshots.c.kind == "batch"
            )
        ).all()
        conn.execute(delete(snapshots).where(snapshots.c.id.in_([g.id for g in gone])))
        freed = 0
        for g in gone:
            path = Path(g.path)
            if path.exists():
                freed += path.stat().st_size
        result = Purge(cutoff, len(doomed), n, len(gone), kept, freed)
        events.record(
            conn,
            events.Kind.PREDICTIONS_PURGED,
            actor=actor,
            subject=events.project_subject(project.spec.project),
            reason=f"older than the retention of {project.spec.retention.predictions.amount} "
            f"{project.spec.retention.predictions.unit}(s)",
            evidence={
                "cutoff": cutoff.isoformat(),
                "batches": len(doomed),
                "predictions": n,
                "snapshots": len(gone),
                "kept_on_hold": kept,
                "held_versions": sorted(held),
            },
            at=now,
        )
    for g in gone:  # files only after the records are gone for good
        if not Path(g.path).is_dir():  # a partitioned batch's folder: swept below
            Path(g.path).unlink(missing_ok=True)
    from copml.partitioned import sweep

    sweep(project)  # parts of purged partitioned batches, and of runs that never committed
    return result
