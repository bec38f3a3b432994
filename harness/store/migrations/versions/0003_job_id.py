"""Schema version 3: runs.job_id (the launcher's job, e.g. a Slurm job id) and the ``queued`` status.

Revision ID: 0003_job_id
Revises: 0002_checkpoint_path
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_job_id"
down_revision = "0002_checkpoint_path"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("job_id", sa.String(200)))
    op.execute("UPDATE schema_info SET version = 3")


def downgrade() -> None:
    op.drop_column("runs", "job_id")
    op.execute("UPDATE schema_info SET version = 2")
