"""Multiclass and regression models: ground truth may be a value, and a multiclass
decision keeps every class's probability.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as table:
        table.alter_column(
            "actual", existing_type=sa.SmallInteger(), type_=sa.Float(), existing_nullable=False
        )
    op.create_table(
        "class_probabilities",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["seq"], ["predictions.seq"]),
        sa.PrimaryKeyConstraint("seq"),
    )


def downgrade() -> None:
    op.drop_table("class_probabilities")
    with op.batch_alter_table("feedback") as table:
        table.alter_column(
            "actual", existing_type=sa.Float(), type_=sa.SmallInteger(), existing_nullable=False
        )
