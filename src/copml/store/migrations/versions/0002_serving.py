"""Real-time serving: per-prediction inputs of API requests, and hashed API keys.

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


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("prediction_inputs")
