"""Dispatch's order as an index: (server_id, status, priority DESC, created_at, id).

The old index (server_id, status, priority, created_at) could not give dispatch's order
(priority descending, then oldest first), so each dispatch sorted every queued job of the server
to take the first few (orm.py, ``ix_jobs_dispatch_order``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_server_status", table_name="jobs")
    op.create_index("ix_jobs_dispatch_order", "jobs",
                    ["server_id", "status", sa.text("priority DESC"), "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_dispatch_order", table_name="jobs")
    op.create_index("ix_jobs_server_status", "jobs", ["server_id", "status", "priority", "created_at"])
