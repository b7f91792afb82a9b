"""copml's store: SQLite (WAL) by default, PostgreSQL through ``COPML_DB_URL``.

The schema is owned by Alembic migrations; :func:`open_store` brings a database to the
latest revision before anything reads or writes it.
"""

from __future__ import annotations

from copml.store.database import (
    HEAD_REVISION,
    UNAVAILABLE,
    Migrations,
    applications,
    bind_value,
    bulk_insert,
    heads,
    json_safe,
    lock_for_writing,
    open_store,
    upgrade,
)
from copml.store.schema import (
    actions,
    alerts,
    api_keys,
    batch_parts,
    batches,
    class_probabilities,
    events,
    feedback,
    heartbeats,
    idempotency_keys,
    incident_predictions,
    incidents,
    metadata,
    metric_windows,
    policy_evaluations,
    prediction_inputs,
    predictions,
    reviews,
    snapshots,
    usage,
)

__all__ = [
    "HEAD_REVISION",
    "UNAVAILABLE",
    "Migrations",
    "actions",
    "alerts",
    "api_keys",
    "applications",
    "batch_parts",
    "batches",
    "bind_value",
    "bulk_insert",
    "class_probabilities",
    "events",
    "feedback",
    "heads",
    "heartbeats",
    "idempotency_keys",
    "incident_predictions",
    "incidents",
    "json_safe",
    "lock_for_writing",
    "metadata",
    "metric_windows",
    "open_store",
    "policy_evaluations",
    "prediction_inputs",
    "predictions",
    "reviews",
    "snapshots",
    "upgrade",
    "usage",
]
