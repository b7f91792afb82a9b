"""Continuous operations: policy evaluations, actions, alerts, compute usage.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "policy_evaluations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("window_end", TZ, nullable=False),
        sa.Column("evaluated_at", TZ, nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("acted", sa.Boolean, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("values", sa.JSON, nullable=False),
    )
    op.create_index("ix_policy_evaluations_policy", "policy_evaluations", ["policy", "window_end"])
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("policy", sa.String(64), nullable=True),
        sa.Column("window_end", TZ, nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.UniqueConstraint("policy", "window_end", "kind", "attempt", name="uq_actions_once"),
    )
    op.create_index("ix_actions_state", "actions", ["state"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("opened_at", TZ, nullable=False),
        sa.Column("closed_at", TZ, nullable=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("deliveries", sa.JSON, nullable=False),
    )
    op.create_index("ix_alerts_key", "alerts", ["key", "closed_at"])
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("cpu_seconds", sa.Float, nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("ix_usage_at", "usage", ["at"])


def downgrade() -> None:
    for table in ("usage", "alerts", "actions", "policy_evaluations"):
        op.drop_table(table)
