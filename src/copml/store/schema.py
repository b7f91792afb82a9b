"""copml's own records as SQLAlchemy Core tables; one schema for SQLite and PostgreSQL.

Core rather than ORM because predictions are written and read in bulk (millions of rows).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
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

from copml.times import utc

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
        value = utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return utc(value)


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

# A sequence number that is SQLite's rowid (cheap appends) and a BIGINT elsewhere.
Seq = BigInteger().with_variant(Integer(), "sqlite")

batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(16), nullable=False, unique=True),  # public prefix of prediction ids
    Column("created_at", UTCDateTime(), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("snapshot_id", String(64), ForeignKey("snapshots.id"), nullable=True),
    Column("origin", String(8), nullable=False),  # batch | api
    Column("first_seq", Seq, nullable=False),
    Column("n_rows", Integer, nullable=False),
    # Who answered: the champion, a canary; or a shadow, which answers no one and mirrors,
    # row for row, the batch whose key ``shadows`` holds.
    Column("arm", String(8), nullable=False, server_default="champion"),
    Column("shadows", String(16), nullable=True),
    Index("ix_batches_created_at", "created_at"),
)

# One narrow row per prediction: what was decided. A batch owns the contiguous range
# ``first_seq .. first_seq + n_rows - 1``; who each prediction was about and what the model
# saw are in the batch's snapshot at row ``seq - first_seq``. The public prediction id is the
# batch key followed by that row in hex, so no per-row string key or index is needed.
predictions = Table(
    "predictions",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=False),
    # The class's code (1 = a binary's declared positive); 0 for a value (see copml.labels).
    Column("label", SmallInteger, nullable=False),
    Column("score", Float, nullable=False),
    Column("review", Boolean, nullable=False),
)

# The Parquet parts of a batch scored by an engine's workers (copml.partitioned): the
# prediction log's part and the redacted input's part of each partition, with their sha256s,
# written in the header's transaction, so a batch is visible with all its parts or not at all.
batch_parts = Table(
    "batch_parts",
    metadata,
    Column("batch_key", String(16), primary_key=True),
    Column("part", Integer, primary_key=True, autoincrement=False),
    Column("first_row", BigInteger, nullable=False),
    Column("n_rows", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("input_path", Text, nullable=False),
    Column("input_sha256", String(64), nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column(
        "prediction_seq", Seq, ForeignKey("predictions.seq"), primary_key=True, autoincrement=False
    ),
    # A class's code (1 = a binary's declared positive) or a value (a regression's truth).
    Column("actual", Float, nullable=False),
    Column("observed_at", UTCDateTime(), nullable=False),
    Column("loaded_at", UTCDateTime(), nullable=False),
    Column("source", Text, nullable=False),
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

# What a real-time request sent, per prediction (batch predictions read theirs from the
# batch snapshot instead): the redacted input, its hash, the entity and the latency.
prediction_inputs = Table(
    "prediction_inputs",
    metadata,
    Column("seq", Seq, ForeignKey("predictions.seq"), primary_key=True, autoincrement=False),
    Column("input", JSON, nullable=False),
    Column("input_hash", String(64), nullable=False),
    Column("entity_key", String(32), nullable=True),
    Column("latency_ms", Float, nullable=False),
    Index("ix_prediction_inputs_entity_key", "entity_key"),
)

# Every class's probability of a multiclass decision, in the declared order of the classes
# (the prediction's score is the chosen class's): what log loss and an audit read.
class_probabilities = Table(
    "class_probabilities",
    metadata,
    Column("seq", Seq, ForeignKey("predictions.seq"), primary_key=True, autoincrement=False),
    Column("probabilities", JSON, nullable=False),
)

# An ``Idempotency-Key`` a client sent with a prediction request, scoped by the caller's
# key, and the answer it got: a retry with the same key (after a lost response, or through
# a load balancer's retry on another replica) gets the same answer instead of a second
# prediction. Written in the prediction's own transaction; purged with it.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("caller", String(16), primary_key=True),  # the API key's prefix; "" without keys
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),  # keyed hash of the instances
    Column("seq", Seq, ForeignKey("predictions.seq"), nullable=False),  # its first prediction
    Column("response", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_idempotency_keys_seq", "seq"),
)

# API keys, stored as scrypt hashes; ``prefix`` (the key's first characters) finds the row.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("prefix", String(12), nullable=False, unique=True),
    Column("salt", String(32), nullable=False),
    Column("hash", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("name", String(128), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
)

# The human-review queue: predictions whose score fell in the declared uncertainty band.
reviews = Table(
    "reviews",
    metadata,
    Column("seq", Seq, ForeignKey("predictions.seq"), primary_key=True, autoincrement=False),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("resolved_at", UTCDateTime(), nullable=True),
    Column("resolved_by", String(128), nullable=True),
    Column("actual", Float, nullable=True),  # the person's label, coded
    Column("overridden", Boolean, nullable=True),  # it differs from the model's decision
    # Why: the cause it was opened for beyond its score ("out_of_distribution: …"), then,
    # on its own line, the person's words at resolution.
    Column("reason", Text, nullable=True),
    Index("ix_reviews_open", "resolved_at"),
)

# Liveness as seen from inside (the server's heartbeats) and outside (``copml probe``).
heartbeats = Table(
    "heartbeats",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("source", String(16), nullable=False),  # server | probe
    Column("ok", Boolean, nullable=False),
    Column("latency_ms", Float, nullable=True),
    Column("detail", Text, nullable=True),
    # A server's beat: its address (host:port as served) and process, and the version it
    # had loaded; None for probes.
    Column("replica", String(160), nullable=True),
    Column("pid", Integer, nullable=True),
    Column("model_version", String(32), nullable=True),
    Index("ix_heartbeats_at", "at"),
)

# Each policy evaluation, with the figures that decided it (design §4).
policy_evaluations = Table(
    "policy_evaluations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("policy", String(64), nullable=False),
    Column("window_end", UTCDateTime(), nullable=False),
    Column("evaluated_at", UTCDateTime(), nullable=False),
    Column("outcome", String(8), nullable=False),  # true | false | unknown
    Column("acted", Boolean, nullable=False),  # false while cooling down or suspended
    Column("note", Text, nullable=True),
    Column("values", JSON, nullable=False),
    Index("ix_policy_evaluations_policy", "policy", "window_end"),
)

# Actions as persisted state machines: pending -> running -> succeeded | failed (design §8).
actions = Table(
    "actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("policy", String(64), nullable=True),  # None when a person asked for it
    Column("window_end", UTCDateTime(), nullable=True),
    Column("state", String(12), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("owner", String(64), nullable=True),  # host:pid of the process running it
    Column("attempt", Integer, nullable=False, default=1),
    Column("evidence", JSON, nullable=False),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
    # One action of a kind per policy and window: evaluating twice never acts twice.
    UniqueConstraint("policy", "window_end", "kind", "attempt", name="uq_actions_once"),
    Index("ix_actions_state", "state"),
)

# Open and closed alerts: one per condition while it holds (de-duplication).
alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(128), nullable=False),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("closed_at", UTCDateTime(), nullable=True),
    Column("title", Text, nullable=False),
    Column("details", JSON, nullable=False),
    Column("deliveries", JSON, nullable=False),
    Index("ix_alerts_key", "key", "closed_at"),
)

# Compute and human time spent, priced by the spec's ``costs`` per window.
usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("kind", String(16), nullable=False),  # train | score | serve | operate
    Column("cpu_seconds", Float, nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_usage_at", "at"),
)

# Serious incidents (EU AI Act Art. 73): open -> reported -> closed, with the legal deadline
# for the report; what happened to each is in the event log (subject ``incident:<id>``).
incidents = Table(
    "incidents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("severity", String(16), nullable=False),  # serious | death | widespread
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("deadline", UTCDateTime(), nullable=False),
    Column("state", String(12), nullable=False),  # open | reported | closed
    Column("reason", Text, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("reported_at", UTCDateTime(), nullable=True),
    Column("reference", String(200), nullable=True),  # the authority's reference
    Column("closed_at", UTCDateTime(), nullable=True),
    Index("ix_incidents_state", "state"),
)

# The predictions an incident cites, in the order given. Ids, not sequence numbers: the
# incident is a legal record that outlives the predictions' retention.
incident_predictions = Table(
    "incident_predictions",
    metadata,
    Column("incident_id", Integer, ForeignKey("incidents.id"), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("prediction_id", String(24), nullable=False),
    Index("ix_incident_predictions_prediction", "prediction_id"),
)
