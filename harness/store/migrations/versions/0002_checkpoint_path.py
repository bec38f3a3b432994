"""Schema version 2: runs.checkpoint_path (where the run's final weights were saved).

Revision ID: 0002_checkpoint_path
Revises: 0001_v1

Some version-1 databases already have the column (one release wrote it before bumping the
version), so it is added only where missing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_checkpoint_path"
down_revision = "0001_v1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "checkpoint_path" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}:
        op.add_column("runs", sa.Column("checkpoint_path", sa.String(1000)))
    op.execute("UPDATE schema_info SET version = 2")


def downgrade() -> None:
    op.drop_column("runs", "checkpoint_path")
    op.execute("UPDATE schema_info SET version = 1")
