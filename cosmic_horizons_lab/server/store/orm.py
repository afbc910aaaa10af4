"""The tables. The store is the truth about every job; backends are reconciled to it.

Schema changes go through versioned migrations in ``migrations/versions`` —
never ``create_all`` on a live database — so an upgrade keeps existing jobs.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware UTC in and out, whatever the database keeps.

    SQLite has no time zones; PostgreSQL has ``timestamptz``. Either way the
    application only ever sees aware UTC datetimes.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class BatchRecord(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(255), index=True)
    parallel_limit: Mapped[int | None] = mapped_column(sa.Integer)
    kind: Mapped[str] = mapped_column(sa.String(16), default="batch")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobRecord(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.UniqueConstraint("user", "idempotency_key", name="uq_jobs_user_idempotency_key"),
        sa.Index("ix_jobs_user_created", "user", "created_at"),
        sa.Index("ix_jobs_updated", "updated_at", "id"),  # the analytics export's watermark (0008)
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(255))
    agent: Mapped[str] = mapped_column(sa.String(64))
    dataset_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    progress: Mapped[float] = mapped_column(sa.Float, default=0.0)
    priority: Mapped[int] = mapped_column(sa.Integer, default=5)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(sa.Text)
    reason: Mapped[str | None] = mapped_column(sa.String(64))
    notes: Mapped[str | None] = mapped_column(sa.Text)
    webhook_url: Mapped[str | None] = mapped_column(sa.Text)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    correlation_id: Mapped[str] = mapped_column(sa.String(128))
    #: The W3C traceparent of the request that submitted the job: the job's trace, into which
    #: its transitions, backend calls and the executor's stages go (server/tracing.py).
    traceparent: Mapped[str | None] = mapped_column(sa.String(64))
    batch_id: Mapped[str | None] = mapped_column(sa.ForeignKey("batches.id"), index=True)
    depends_on: Mapped[list[str]] = mapped_column(JSONType, default=list)
    backend: Mapped[str] = mapped_column(sa.String(32))
    #: The server that manages this job (several single-user servers may share one database).
    server_id: Mapped[str] = mapped_column(sa.String(255))
    backend_job_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    #: A launch intent not yet settled: set and committed before the backend is asked to start
    #: the job, handed to it (the job directory, Slurm's ``--comment``), and cleared when the
    #: start is recorded (the run keeps it). A job that still has one may have started: a
    #: restarted server looks for what it left before launching again.
    launch_token: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    gpu_count: Mapped[int] = mapped_column(sa.Integer, default=1)
    max_runtime_seconds: Mapped[int | None] = mapped_column(sa.Integer)
    estimated_runtime_minutes: Mapped[int | None] = mapped_column(sa.Integer)
    retries: Mapped[int] = mapped_column(sa.Integer, default=0)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Charged when the job ends (costs.py): GPU-hours used, their price, and TACC Service Units.
    gpu_hours: Mapped[float | None] = mapped_column(sa.Float)
    cost_usd: Mapped[float | None] = mapped_column(sa.Float)
    su_charged: Mapped[float | None] = mapped_column(sa.Float)


#: Dispatch's order (dispatch.py: a server's QUEUED jobs, highest priority first, then oldest), so
#: that its "first few" are read off the index instead of sorting every queued job on each
#: dispatch: with thousands queued that sort was a tenth of the server's time (0010). Its
#: (server_id, status) prefix also serves reconciliation's active jobs.
sa.Index("ix_jobs_dispatch_order", JobRecord.server_id, JobRecord.status, JobRecord.priority.desc(),
         JobRecord.created_at, JobRecord.id)


class Run(Base):
    """One attempt at running a job: what the backend was given and what came back."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    attempt: Mapped[int] = mapped_column(sa.Integer)
    backend: Mapped[str] = mapped_column(sa.String(32))
    backend_job_id: Mapped[str | None] = mapped_column(sa.String(64))
    #: The launch token this attempt was started (or adopted) with.
    launch_token: Mapped[str | None] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16))
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)
    reason: Mapped[str | None] = mapped_column(sa.String(64))
    #: Bytes of the job's events.jsonl already turned into events (exactly-once tailing).
    events_offset: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: Bytes of the job's resource samples file already ingested into ``job_samples``.
    samples_offset: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        sa.Index("ix_events_user_id", "user", "id"),
        sa.Index("ix_events_job_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(sa.String(64))
    job_id: Mapped[str | None] = mapped_column(sa.String(32))
    user: Mapped[str] = mapped_column(sa.String(255))
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    correlation_id: Mapped[str | None] = mapped_column(sa.String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class GpuSample(Base):
    """One telemetry sample of one GPU: what the heatmap and utilisation metrics read."""

    __tablename__ = "gpu_samples"
    __table_args__ = (sa.Index("ix_gpu_samples_ts", "ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    gpu_index: Mapped[int] = mapped_column(sa.Integer)
    gpu_uuid: Mapped[str] = mapped_column(sa.String(64))
    utilization: Mapped[float] = mapped_column(sa.Float)
    memory_used_mb: Mapped[float] = mapped_column(sa.Float)
    memory_total_mb: Mapped[float] = mapped_column(sa.Float)


class DatasetRecord(Base):
    """What we learnt about one archive file: its checksum and its validation (both costly to redo).

    Keyed by path; ``size_bytes``/``modified_at`` say whether the cache still
    describes the file on disk.
    """

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(sa.String(255), index=True)
    path: Mapped[str] = mapped_column(sa.Text, unique=True)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    validation: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Transfer(Base):
    """One staging of a dataset to a target: the queue, its progress, and its measured throughput."""

    __tablename__ = "transfers"
    __table_args__ = (
        sa.Index("ix_transfers_user_dataset", "user", "dataset_id", "target", "created_at"),
        sa.Index("ix_transfers_server_status", "server_id", "status"),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(255))
    dataset_id: Mapped[str] = mapped_column(sa.String(255))
    target: Mapped[str] = mapped_column(sa.String(64))
    priority: Mapped[str] = mapped_column(sa.String(8))
    status: Mapped[str] = mapped_column(sa.String(16))
    convert: Mapped[str | None] = mapped_column(sa.String(16))
    source_path: Mapped[str] = mapped_column(sa.Text)
    dest_path: Mapped[str] = mapped_column(sa.Text)
    total_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    bytes_done: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    resumed_from: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    error: Mapped[str | None] = mapped_column(sa.Text)
    server_id: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Seconds spent moving bytes (not queueing, not verifying): the basis of transfer estimates.
    copy_seconds: Mapped[float | None] = mapped_column(sa.Float)
    verify_seconds: Mapped[float | None] = mapped_column(sa.Float)


class WebhookDelivery(Base):
    """An outbox row: one POST owed to a job's webhook_url, written with the transition it reports."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (sa.Index("ix_webhook_deliveries_due", "server_id", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.String(32), index=True)
    user: Mapped[str] = mapped_column(sa.String(255))
    server_id: Mapped[str] = mapped_column(sa.String(255))
    url: Mapped[str] = mapped_column(sa.Text)
    event: Mapped[str] = mapped_column(sa.String(64))
    #: The exact bytes sent (and signed) on every attempt, so retries are byte-identical.
    body: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookSecret(Base):
    """Each user's HMAC-SHA256 key for webhook signatures (``GET webhooks/secret``)."""

    __tablename__ = "webhook_secrets"

    user: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    secret: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SkyFootprint(Base):
    """Where on the sky a job looked: pointing and field-of-view radius (``sky/coverage``).

    Read from the job's image (its WCS extent) or else its data (phase centre, primary beam) by
    the science worker, once per job status: ``job_status`` says which state it was read in.
    """

    __tablename__ = "sky_footprints"

    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(255), index=True)
    job_status: Mapped[str] = mapped_column(sa.String(16))
    #: "image", "dataset" or "parent" (a job with no data of its own, e.g. AnomalyDetection); "none": unknown.
    basis: Mapped[str] = mapped_column(sa.String(16))
    ra_deg: Mapped[float | None] = mapped_column(sa.Float)
    dec_deg: Mapped[float | None] = mapped_column(sa.Float)
    radius_deg: Mapped[float | None] = mapped_column(sa.Float)
    image: Mapped[str | None] = mapped_column(sa.Text)
    error: Mapped[str | None] = mapped_column(sa.Text)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SkyAnnotation(Base):
    """A user's mark on the sky (point, circle or polygon, with a note), kept with the job it is about."""

    __tablename__ = "sky_annotations"
    __table_args__ = (sa.Index("ix_sky_annotations_user_job", "user", "job_id"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(255))
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    shape: Mapped[dict[str, Any]] = mapped_column(JSONType)
    note: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SkySnapshot(Base):
    """A saved sky view (centre, field of view, layers, annotations) and its picture."""

    __tablename__ = "sky_snapshots"
    __table_args__ = (sa.UniqueConstraint("user", "name", name="uq_sky_snapshots_user_name"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(255), index=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    view: Mapped[dict[str, Any]] = mapped_column(JSONType)
    png: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BusCursor(Base):
    """How far an event bus bridge has got: events up to ``last_event_id`` are acknowledged."""

    __tablename__ = "bus_cursors"

    name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobSample(Base):
    """One resource sample taken inside a job: a GPU (by UUID, on its host) or, without one, the CPU.

    ``utilization`` is a percentage; ``memory_bytes`` is the GPU's memory used, or the job's RSS.
    """

    __tablename__ = "job_samples"
    __table_args__ = (
        sa.Index("ix_job_samples_job_id", "job_id", "id"),
        sa.Index("ix_job_samples_host_ts", "host", "ts"),
        sa.Index("ix_job_samples_user_ts", "user", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.String(32))
    user: Mapped[str] = mapped_column(sa.String(255))
    host: Mapped[str] = mapped_column(sa.String(255))
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(sa.String(8))  # "gpu" or "cpu"
    gpu_uuid: Mapped[str | None] = mapped_column(sa.String(64))
    gpu_index: Mapped[int | None] = mapped_column(sa.Integer)
    utilization: Mapped[float] = mapped_column(sa.Float)
    memory_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    memory_total_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    power_watts: Mapped[float | None] = mapped_column(sa.Float)
    temperature_c: Mapped[float | None] = mapped_column(sa.Float)


class Alert(Base):
    """One firing of an alert rule; a rule fires once per episode (one open row per rule and key)."""

    __tablename__ = "alerts"
    __table_args__ = (
        sa.Index("ix_alerts_rule_key", "rule", "key", "resolved_at"),
        sa.Index("ix_alerts_user_fired", "user", "fired_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(sa.String(64))
    key: Mapped[str] = mapped_column(sa.String(255))
    user: Mapped[str] = mapped_column(sa.String(255))
    job_id: Mapped[str | None] = mapped_column(sa.String(32))
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
