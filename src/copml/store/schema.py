"""copml's own records as SQLAlchemy Core tables; one schema for SQLite and PostgreSQL.

Core rather than ORM because predictions are written and read in bulk (millions of rows).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend.

    SQLite has no time type and compares text: values go there as naive UTC, which
    SQLAlchemy writes in one fixed format (always with microseconds), so ``<`` and ``>=``
    between stored values and parameters stay correct.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


snapshots = Table(
    "snapshots",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the canonical content
    Column("created_at", UTCDateTime(), nullable=False),
    Column("kind", String(16), nullable=False),  # training | batch
    Column("storage", String(16), nullable=False),  # copy | reference
    Column("source", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("n_rows", Integer, nullable=False),
    Column("n_bytes", Integer, nullable=False),
    Column("schema", JSON, nullable=False),
    Column("profile", JSON, nullable=False),
    Column("manifest", JSON, nullable=True),
)

predictions = Table(
    "predictions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("entity_key", String(32), nullable=True),  # keyed hash of the entity id
    Column("snapshot_id", String(64), ForeignKey("snapshots.id"), nullable=True),
    Column("row_index", Integer, nullable=True),
    Column("input", JSON, nullable=True),  # redacted input when not in a snapshot
    Column("input_hash", String(64), nullable=True),
    Column("label", SmallInteger, nullable=False),  # 1 = the declared positive class
    Column("score", Float, nullable=False),
    Column("review", Boolean, nullable=False, default=False),
    Column("latency_ms", Float, nullable=True),
    Column("origin", String(8), nullable=False),  # batch | api
    Index("ix_predictions_created_at", "created_at"),
    Index("ix_predictions_entity_key", "entity_key"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("prediction_id", String(32), ForeignKey("predictions.id"), nullable=False),
    Column("actual", SmallInteger, nullable=False),  # 1 = the declared positive class
    Column("observed_at", UTCDateTime(), nullable=False),
    Column("loaded_at", UTCDateTime(), nullable=False),
    Column("source", Text, nullable=False),
    UniqueConstraint("prediction_id", name="uq_feedback_prediction"),
)

metric_windows = Table(
    "metric_windows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("window_start", UTCDateTime(), nullable=False),
    Column("window_end", UTCDateTime(), nullable=False),
    Column("computed_at", UTCDateTime(), nullable=False),
    Column("model_version", String(32), nullable=True),
    Column("n_predictions", Integer, nullable=False),
    Column("n_labelled", Integer, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("drift", JSON, nullable=False),
    UniqueConstraint("window_end", name="uq_metric_windows_end"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("subject", String(256), nullable=True),
    Column("reason", Text, nullable=True),
    Column("evidence", JSON, nullable=True),
    Index("ix_events_kind", "kind"),
    Index("ix_events_subject", "subject"),
)
