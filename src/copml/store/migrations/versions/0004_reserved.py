"""Reserved: this revision once created an application's table in the core schema.

That table now belongs to its application's own migration branch (see
``copml.store.database.Migrations``); the revision stays so that existing stores keep a
continuous history, and does nothing.

Revision ID: 0004
Revises: 0003
"""

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
