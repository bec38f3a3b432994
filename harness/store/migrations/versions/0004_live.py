"""Schema version 4: runs.heartbeat_at (a running cell's last live write) and the ``throughput`` table
(tokens/s measured per architecture, size, context, backend and GPU kind, for cost estimates).

Revision ID: 0004_live
Revises: 0003_job_id
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_live"
down_revision = "0003_job_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
    op.create_table(
        "throughput",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mixer", sa.String(200), nullable=False),
        sa.Column("backbone", sa.String(64), nullable=False),
        sa.Column("size", sa.String(32), nullable=False),
        sa.Column("seq_len", sa.Integer, nullable=False),
        sa.Column("backend", sa.String(200), nullable=False),
        sa.Column("gpu", sa.String(64), nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("tokens_per_s", sa.Float, nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("environment", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_throughput_mixer", "throughput", ["mixer"])
    op.execute("UPDATE schema_info SET version = 4")


def downgrade() -> None:
    op.drop_index("ix_throughput_mixer", "throughput")
    op.drop_table("throughput")
    op.drop_column("runs", "heartbeat_at")
    op.execute("UPDATE schema_info SET version = 3")
