"""The sky: job footprints, annotations and snapshots.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from cosmic_horizons_lab.server.store.orm import JSONType, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sky_footprints",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("job_status", sa.String(16), nullable=False),
        sa.Column("basis", sa.String(16), nullable=False),
        sa.Column("ra_deg", sa.Float),
        sa.Column("dec_deg", sa.Float),
        sa.Column("radius_deg", sa.Float),
        sa.Column("image", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("computed_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_sky_footprints_user", "sky_footprints", ["user"])
    op.create_table(
        "sky_annotations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("shape", JSONType, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_sky_annotations_user_job", "sky_annotations", ["user", "job_id"])
    op.create_table(
        "sky_snapshots",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("view", JSONType, nullable=False),
        sa.Column("png", sa.LargeBinary),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("user", "name", name="uq_sky_snapshots_user_name"),
    )
    op.create_index("ix_sky_snapshots_user", "sky_snapshots", ["user"])


def downgrade() -> None:
    op.drop_table("sky_snapshots")
    op.drop_table("sky_annotations")
    op.drop_table("sky_footprints")
