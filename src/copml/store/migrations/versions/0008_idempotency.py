"""Idempotency keys: a prediction request's ``Idempotency-Key`` and the answer it got, so a
retried request (a lost response, a load balancer's retry on another replica) is answered
again instead of predicted twice.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "idempotency_keys",
        sa.Column("caller", sa.String(16), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("seq", seq, sa.ForeignKey("predictions.seq"), nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_idempotency_keys_seq", "idempotency_keys", ["seq"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_seq", "idempotency_keys")
    op.drop_table("idempotency_keys")
