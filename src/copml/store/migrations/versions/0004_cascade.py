"""Image cascades: model 2's answer and both networks' versions beside each prediction.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cascade_answers",
        sa.Column(
            "seq", SEQ, sa.ForeignKey("predictions.seq"), primary_key=True, autoincrement=False
        ),
        sa.Column("type", sa.String(32), nullable=True),
        sa.Column("type_probability", sa.Float, nullable=True),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("models", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cascade_answers")
