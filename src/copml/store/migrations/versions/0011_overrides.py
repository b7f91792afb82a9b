"""Human oversight (issue 17.2): a resolved review keeps the person's label, whether it
overrode the model's decision, and why.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("actual", sa.Float(), nullable=True))
        batch.add_column(sa.Column("overridden", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("reason")
        batch.drop_column("overridden")
        batch.drop_column("actual")
