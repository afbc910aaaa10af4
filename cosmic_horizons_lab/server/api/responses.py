"""How jobs look on the wire (the shapes the OpenAPI document describes)."""

from __future__ import annotations

from typing import Any

from cosmic_horizons_lab.protocol.clock import isoformat
from cosmic_horizons_lab.server.store.orm import JobRecord


def job_to_json(job: JobRecord, api_url: str) -> dict[str, Any]:
    return {
        "id": job.id,
        "user": job.user,
        "agent": job.agent,
        "dataset_id": job.dataset_id,
        "status": job.status,
        "progress": job.progress,
        "priority": job.priority,
        "params": job.params or {},
        "result": job.result,
        "metrics": job.metrics or {},
        "error": job.error,
        "reason": job.reason,
        "notes": job.notes,
        "webhook_url": job.webhook_url,
        "correlation_id": job.correlation_id,
        "batch_id": job.batch_id,
        "depends_on": job.depends_on or [],
        "backend": job.backend,
        "backend_job_id": job.backend_job_id,
        "tacc_job_id": job.backend_job_id,
        "gpu_count": job.gpu_count,
        "max_runtime_seconds": job.max_runtime_seconds,
        "estimated_runtime_minutes": job.estimated_runtime_minutes,
        "retries": job.retries,
        "attempts": job.attempts,
        "created_at": isoformat(job.created_at),
        "updated_at": isoformat(job.updated_at),
        "started_at": isoformat(job.started_at),
        "completed_at": isoformat(job.completed_at),
        "output_url": f"{api_url}jobs/{job.id}/outputs",
    }


def status_to_json(job: JobRecord, api_url: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "progress": job.progress,
        "metrics": job.metrics or {},
        "output_url": f"{api_url}jobs/{job.id}/outputs",
        "backend_job_id": job.backend_job_id,
        "reason": job.reason,
        "updated_at": isoformat(job.updated_at),
    }
    if job.error:
        doc["error"] = job.error
    return doc
