"""The x-ray application's table: model 2's answer and both networks' versions beside each
prediction. Stores made before the application had its own branch already have it (the
core's revision 0004 created it then), so it is created only where it is missing.

Revision ID: xray_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "xray_0001"
down_revision = None
branch_labels = ("xray",)
depends_on = "0003"  # predictions

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("cascade_answers"):
        return
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
