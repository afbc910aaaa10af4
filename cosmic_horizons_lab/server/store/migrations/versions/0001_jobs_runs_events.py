"""Jobs, batches, runs and events.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

from cosmic_horizons_lab.server.store.orm import BigId, JSONType, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("parallel_limit", sa.Integer),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_batches_user", "batches", ["user"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("dataset_id", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("params", JSONType, nullable=False),
        sa.Column("result", JSONType),
        sa.Column("metrics", JSONType, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("reason", sa.String(64)),
        sa.Column("notes", sa.Text),
        sa.Column("webhook_url", sa.Text),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("batch_id", sa.String(32), sa.ForeignKey("batches.id")),
        sa.Column("depends_on", JSONType, nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("server_id", sa.String(255), nullable=False),
        sa.Column("backend_job_id", sa.String(64)),
        sa.Column("gpu_count", sa.Integer, nullable=False),
        sa.Column("max_runtime_seconds", sa.Integer),
        sa.Column("estimated_runtime_minutes", sa.Integer),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("completed_at", UTCDateTime),
        sa.UniqueConstraint("user", "idempotency_key", name="uq_jobs_user_idempotency_key"),
    )
    op.create_index("ix_jobs_user_created", "jobs", ["user", "created_at"])
    op.create_index("ix_jobs_server_status", "jobs", ["server_id", "status", "priority", "created_at"])
    op.create_index("ix_jobs_dataset_id", "jobs", ["dataset_id"])
    op.create_index("ix_jobs_batch_id", "jobs", ["batch_id"])
    op.create_index("ix_jobs_backend_job_id", "jobs", ["backend_job_id"])
    op.create_table(
        "runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("backend_job_id", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("reason", sa.String(64)),
        sa.Column("events_offset", sa.BigInteger, nullable=False),
        sa.Column("submitted_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("ended_at", UTCDateTime),
    )
    op.create_index("ix_runs_job_id", "runs", ["job_id"])
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(32)),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.Column("correlation_id", sa.String(128)),
        sa.Column("payload", JSONType, nullable=False),
    )
    op.create_index("ix_events_user_id", "events", ["user", "id"])
    op.create_index("ix_events_job_id", "events", ["job_id", "id"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("runs")
    op.drop_table("jobs")
    op.drop_table("batches")
