"""Schema version 1: runs, metrics, position_loss, latency, schema_info (as first released).

Revision ID: 0001_v1
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_v1"
down_revision = None
branch_labels = None
depends_on = None

# Counts that outgrow 32 bits (GPU memory in bytes) are BIGINT on PostgreSQL; SQLite's INTEGER is already 64-bit.
BIG = sa.Integer().with_variant(sa.BigInteger(), "postgresql")


def upgrade() -> None:
    op.create_table("schema_info", sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False))
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_key", sa.String(64), nullable=False),
        sa.Column("suite", sa.String(200), nullable=False),
        sa.Column("mixer", sa.String(200), nullable=False),
        sa.Column("backbone", sa.String(64), nullable=False),
        sa.Column("size", sa.String(32), nullable=False),
        sa.Column("seq_len", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(500), nullable=False),
        sa.Column("n_params", BIG),
        sa.Column("n_params_non_embedding", BIG),
        sa.Column("backend", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("claimed_by", sa.String(200)),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("environment", sa.JSON()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_runs_run_key", "runs", ["run_key"], unique=True)
    op.create_index("ix_runs_suite", "runs", ["suite"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.UniqueConstraint("run_id", "step", "name"),
    )
    op.create_index("ix_metrics_run_id", "metrics", ["run_id"])
    op.create_table(
        "position_loss",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("end", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.UniqueConstraint("run_id", "bucket"),
    )
    op.create_index("ix_position_loss_run_id", "position_loss", ["run_id"])
    op.create_table(
        "latency",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("suite", sa.String(200), nullable=False),
        sa.Column("mixer", sa.String(200), nullable=False),
        sa.Column("backbone", sa.String(64), nullable=False),
        sa.Column("size", sa.String(32), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("context", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("device", sa.String(200), nullable=False),
        sa.Column("backend", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("median_ms", sa.Float()),
        sa.Column("p20_ms", sa.Float()),
        sa.Column("p80_ms", sa.Float()),
        sa.Column("tokens_per_s", sa.Float()),
        sa.Column("peak_memory_bytes", BIG),
        sa.Column("environment", sa.JSON()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_latency_suite", "latency", ["suite"])
    op.execute("INSERT INTO schema_info (version) VALUES (1)")


def downgrade() -> None:
    for table in ("latency", "position_loss", "metrics", "runs", "schema_info"):
        op.drop_table(table)
