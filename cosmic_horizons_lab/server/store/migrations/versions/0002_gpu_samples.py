"""GPU telemetry samples, for the heatmap history and measured utilisation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

from cosmic_horizons_lab.server.store.orm import BigId, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpu_samples",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.Column("gpu_index", sa.Integer, nullable=False),
        sa.Column("gpu_uuid", sa.String(64), nullable=False),
        sa.Column("utilization", sa.Float, nullable=False),
        sa.Column("memory_used_mb", sa.Float, nullable=False),
        sa.Column("memory_total_mb", sa.Float, nullable=False),
    )
    op.create_index("ix_gpu_samples_ts", "gpu_samples", ["ts"])


def downgrade() -> None:
    op.drop_table("gpu_samples")
