"""The first schema: snapshots, batches of predictions, feedback, metric windows, events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("storage", sa.String(16), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("n_rows", sa.Integer, nullable=False),
        sa.Column("n_bytes", sa.Integer, nullable=False),
        sa.Column("schema", sa.JSON, nullable=False),
        sa.Column("profile", sa.JSON, nullable=False),
        sa.Column("manifest", sa.JSON, nullable=True),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(16), nullable=False, unique=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("snapshot_id", sa.String(64), sa.ForeignKey("snapshots.id"), nullable=True),
        sa.Column("origin", sa.String(8), nullable=False),
        sa.Column("first_seq", SEQ, nullable=False),
        sa.Column("n_rows", sa.Integer, nullable=False),
    )
    op.create_index("ix_batches_created_at", "batches", ["created_at"])
    op.create_table(
        "predictions",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=False),
        sa.Column("label", sa.SmallInteger, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("review", sa.Boolean, nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column(
            "prediction_seq",
            SEQ,
            sa.ForeignKey("predictions.seq"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("actual", sa.SmallInteger, nullable=False),
        sa.Column("observed_at", TZ, nullable=False),
        sa.Column("loaded_at", TZ, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
    )
    op.create_table(
        "metric_windows",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("window_start", TZ, nullable=False),
        sa.Column("window_end", TZ, nullable=False),
        sa.Column("computed_at", TZ, nullable=False),
        sa.Column("model_version", sa.String(32), nullable=True),
        sa.Column("n_predictions", sa.Integer, nullable=False),
        sa.Column("n_labelled", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("drift", sa.JSON, nullable=False),
        sa.UniqueConstraint("window_end", name="uq_metric_windows_end"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(256), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("evidence", sa.JSON, nullable=True),
    )
    op.create_index("ix_events_kind", "events", ["kind"])
    op.create_index("ix_events_subject", "events", ["subject"])


def downgrade() -> None:
    for table in ("events", "metric_windows", "feedback", "predictions", "batches", "snapshots"):
        op.drop_table(table)
