"""Alerts: each firing of a rule, so a rule fires once per episode and the history can be read.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from cosmic_horizons_lab.server.store.orm import BigId, JSONType, UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(64), nullable=False),
        #: What the firing is about (a user, a job, an agent): one open alert per (rule, key).
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("job_id", sa.String(32)),
        sa.Column("fired_at", UTCDateTime, nullable=False),
        sa.Column("resolved_at", UTCDateTime),
        sa.Column("payload", JSONType, nullable=False),
    )
    op.create_index("ix_alerts_rule_key", "alerts", ["rule", "key", "resolved_at"])
    op.create_index("ix_alerts_user_fired", "alerts", ["user", "fired_at"])
    # The analytics export reads the jobs changed since its watermark: without this index each
    # export would scan the whole table, and its cost would grow with the history, not the news.
    op.create_index("ix_jobs_updated", "jobs", ["updated_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_updated", table_name="jobs")
    op.drop_table("alerts")
