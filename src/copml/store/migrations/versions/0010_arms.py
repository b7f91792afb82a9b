"""Safe rollout (issue 15): every batch says which arm made it (``champion``, ``canary`` or
``shadow``); a shadow batch names the batch it shadows (row i scored the same input as that
batch's row i), so its input, time and ground truth are that batch's.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("arm", sa.String(8), nullable=False, server_default="champion"))
        batch.add_column(sa.Column("shadows", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("shadows")
        batch.drop_column("arm")
