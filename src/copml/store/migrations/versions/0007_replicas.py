"""Serving replicas: each server heartbeat says which replica (address and process) and
which model version beat, so ``copml status`` can list the replicas seen.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("heartbeats") as table:
        table.add_column(sa.Column("replica", sa.String(160), nullable=True))
        table.add_column(sa.Column("pid", sa.Integer, nullable=True))
        table.add_column(sa.Column("model_version", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("heartbeats") as table:
        table.drop_column("model_version")
        table.drop_column("pid")
        table.drop_column("replica")
