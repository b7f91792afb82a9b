"""The whole record of one decision, and its replay (GDPR Art. 22 in a minute).

What was decided, on which input (PII redacted), by which version, which version was
champion at that moment, the MLflow run, the training snapshot, code commit, params and
seed, the explanation, every event that touched that version, and the serious incidents
that cite the decision. ``replay`` loads the archived version (its artifact sha256
checked) and re-scores the stored input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import or_, select

from copml import events, incidents, prediction_log, registry, reviews, snapshots
from copml.errors import UnknownPrediction
from copml.kinds import kind_for
from copml.project import Project
from copml.store import events as events_table
from copml.store import open_store


def _champion_at(project: Project, at: datetime) -> str | None:
    """The version the ``champion`` alias pointed to at ``at``, from the event log."""
    engine = open_store(project.db_url)
    e = events_table.c
    query = (
        select(e.subject, e.kind)
        .where(
            or_(
                e.kind == events.Kind.MODEL_PROMOTED,
                e.kind == events.Kind.MODEL_ROLLED_BACK,
                e.kind == events.Kind.MODEL_RETIRED,
            ),
            e.at <= at,
        )
        .order_by(e.at.desc(), e.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None or row.kind == events.Kind.MODEL_RETIRED:
        return None
    return events.subject_version(str(row.subject))


def _lineage(project: Project, version: str) -> dict[str, Any]:
    """The version's lineage as the decision record reports it: text as the registry's tags
    write it (params as JSON, seed as text), the training snapshot with its size."""
    recorded = registry.recorded(project, version)
    engine = open_store(project.db_url)
    snap = snapshots.get(engine, recorded.snapshot_id, missing_ok=True)
    out: dict[str, Any] = {
        "run_id": recorded.run_id,
        "training_snapshot": {
            "id": recorded.snapshot_id,
            "sha256": recorded.snapshot_id,  # a snapshot's id is the sha256 of its content
            "rows": snap.n_rows if snap else None,
            "source": snap.source if snap else None,
        },
    }
    if recorded.imported:
        out.update(
            reference_snapshot_id=recorded.reference_snapshot_id,
            lineage=registry.IMPORTED,
            source_uri=recorded.source_uri,
            source_run_id=recorded.source_run_id,
            flavors=list(recorded.flavors),
        )
    params = recorded.params
    return {
        **out,
        "git_commit": recorded.git_commit,
        "git_dirty": bool(recorded.git_dirty),
        "params": None if params is None else json.dumps(params, sort_keys=True, default=str),
        "seed": None if recorded.seed is None else str(recorded.seed),
        "artifact_sha256": recorded.artifact_sha256,
    }


def record(project: Project, prediction_id: str, *, explanation: bool = True) -> dict[str, Any]:
    """The full decision record of ``prediction_id``."""
    engine = open_store(project.db_url)
    found = prediction_log.record(engine, prediction_id)
    if found is None:
        raise UnknownPrediction(prediction_id)
    version = found["model_version"]
    subject = events.model_subject(project.spec.project, version)
    lineage = _lineage(project, version)
    created = datetime.fromisoformat(found["created_at"])
    out: dict[str, Any] = {
        **found,
        "champion_at_the_time": _champion_at(project, created),
        # A person's review of it: who, when, their label, whether it overrode the model, why.
        "human_review": reviews.of_prediction(engine, found["seq"]),
        # The serious incidents that cite it (Art. 73), with their state and history.
        "incidents": [i.as_dict() for i in incidents.citing(engine, prediction_id)],
        "lineage": lineage,
        "events": [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in ev.items()}
            for ev in reversed(events.history(engine, subject=subject, limit=1000))
        ],
    }
    out.update(kind_for(project.spec).audit_entries(project, found, explanation=explanation))
    return out


def archived_model(project: Project, version: str) -> Any:
    """The archived version, its local copy checked against the sha256 recorded at
    registration."""
    return registry.load_recorded(
        project, version, registry.recorded(project, version).artifact_sha256
    )


@dataclass
class Replay:
    prediction_id: str
    model_version: str
    stored_score: float
    replayed_score: float
    identical: bool


def replay(
    project: Project,
    prediction_id: str,
    *,
    record: dict[str, Any] | None = None,
    actor: str | None = None,
) -> Replay:
    """Re-score the stored input with the archived version; identical or not. The replay
    is an event by ``actor`` (default: the person running this process)."""
    engine = open_store(project.db_url)
    found = record or prediction_log.record(engine, prediction_id)
    if found is None:
        raise UnknownPrediction(prediction_id)
    version = found["model_version"]
    score = kind_for(project.spec).replay_score(project, archived_model(project, version), found)
    stored = float(found["score"])
    same = bool(np.float64(score) == np.float64(stored))
    with engine.begin() as conn:
        events.record(
            conn,
            events.Kind.PREDICTION_REPLAYED,
            actor=actor or events.user_actor(),
            subject=f"prediction:{prediction_id}",
            reason="identical" if same else "DIFFERENT",
            evidence={"version": version, "stored": stored, "replayed": score},
        )
    return Replay(prediction_id, version, stored, score, same)
