"""Serious incidents (issue 17.3, EU AI Act Art. 73): each incident with its severity, the
legal deadline for reporting it, its state and the authority's reference; and the
predictions it cites (kept as ids: an incident outlives the predictions' retention).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reference", sa.String(200), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_incidents_state", "incidents", ["state"])
    op.create_table(
        "incident_predictions",
        sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("prediction_id", sa.String(24), nullable=False),
    )
    op.create_index("ix_incident_predictions_prediction", "incident_predictions", ["prediction_id"])


def downgrade() -> None:
    op.drop_index("ix_incident_predictions_prediction", "incident_predictions")
    op.drop_table("incident_predictions")
    op.drop_index("ix_incidents_state", "incidents")
    op.drop_table("incidents")
