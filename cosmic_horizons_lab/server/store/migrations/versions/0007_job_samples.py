"""Resource samples taken inside each job (GPU per UUID and host, or CPU and RSS), ingested in batches.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from cosmic_horizons_lab.server.store.orm import BigId, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_samples",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("gpu_uuid", sa.String(64)),
        sa.Column("gpu_index", sa.Integer),
        sa.Column("utilization", sa.Float, nullable=False),
        sa.Column("memory_bytes", sa.BigInteger, nullable=False),
        sa.Column("memory_total_bytes", sa.BigInteger),
        sa.Column("power_watts", sa.Float),
        sa.Column("temperature_c", sa.Float),
    )
    op.create_index("ix_job_samples_job_id", "job_samples", ["job_id", "id"])
    op.create_index("ix_job_samples_host_ts", "job_samples", ["host", "ts"])
    op.create_index("ix_job_samples_user_ts", "job_samples", ["user", "ts"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("samples_offset", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("samples_offset")
    op.drop_table("job_samples")
