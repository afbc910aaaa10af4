"""Dataset cache, transfers (staging), webhook outbox and secrets; cost columns on jobs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from cosmic_horizons_lab.server.store.orm import BigId, JSONType, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("gpu_hours", sa.Float))
        batch.add_column(sa.Column("cost_usd", sa.Float))
        batch.add_column(sa.Column("su_charged", sa.Float))
    op.create_table(
        "datasets",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("dataset_id", sa.String(255), nullable=False),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("modified_at", UTCDateTime, nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("validation", JSONType),
        sa.Column("validated_at", UTCDateTime),
    )
    op.create_index("ix_datasets_dataset_id", "datasets", ["dataset_id"])
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("dataset_id", sa.String(255), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("priority", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("convert", sa.String(16)),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("dest_path", sa.Text, nullable=False),
        sa.Column("total_bytes", sa.BigInteger, nullable=False),
        sa.Column("bytes_done", sa.BigInteger, nullable=False),
        sa.Column("resumed_from", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.Column("server_id", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("completed_at", UTCDateTime),
        sa.Column("copy_seconds", sa.Float),
        sa.Column("verify_seconds", sa.Float),
    )
    op.create_index("ix_transfers_user_dataset", "transfers", ["user", "dataset_id", "target", "created_at"])
    op.create_index("ix_transfers_server_status", "transfers", ["server_id", "status"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server_id", sa.String(255), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("log", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime),
    )
    op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["server_id", "status", "next_attempt_at"])
    op.create_table(
        "webhook_secrets",
        sa.Column("user", sa.String(255), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_secrets")
    op.drop_table("webhook_deliveries")
    op.drop_table("transfers")
    op.drop_table("datasets")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("su_charged")
        batch.drop_column("cost_usd")
        batch.drop_column("gpu_hours")
