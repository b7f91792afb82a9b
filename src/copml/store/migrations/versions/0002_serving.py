"""Real-time serving: inputs of API predictions, API keys, the review queue, heartbeats.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "prediction_inputs",
        sa.Column(
            "seq", SEQ, sa.ForeignKey("predictions.seq"), primary_key=True, autoincrement=False
        ),
        sa.Column("input", sa.JSON, nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("entity_key", sa.String(32), nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=False),
    )
    op.create_index("ix_prediction_inputs_entity_key", "prediction_inputs", ["entity_key"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("prefix", sa.String(12), nullable=False, unique=True),
        sa.Column("salt", sa.String(32), nullable=False),
        sa.Column("hash", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
    )
    op.create_table(
        "reviews",
        sa.Column(
            "seq", SEQ, sa.ForeignKey("predictions.seq"), primary_key=True, autoincrement=False
        ),
        sa.Column("opened_at", TZ, nullable=False),
        sa.Column("resolved_at", TZ, nullable=True),
        sa.Column("resolved_by", sa.String(128), nullable=True),
    )
    op.create_index("ix_reviews_open", "reviews", ["resolved_at"])
    op.create_table(
        "heartbeats",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("ix_heartbeats_at", "heartbeats", ["at"])


def downgrade() -> None:
    op.drop_table("heartbeats")
    op.drop_table("reviews")
    op.drop_table("api_keys")
    op.drop_table("prediction_inputs")
