"""Launch intents: the token a job's launch is committed with before the backend starts it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("launch_token", sa.String(64)))
        batch.create_index("ix_jobs_launch_token", ["launch_token"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("launch_token", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("launch_token")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_launch_token")
        batch.drop_column("launch_token")
