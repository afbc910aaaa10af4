"""The response side of the OpenAPI document: the shapes the handlers send.

The test suite validates every response it receives against these, so they cannot drift from
what the handlers send. What requests may carry is not here: ``openapi.py`` takes it from the
schemas the validators read (``requests.py``, ``submission.py``, ``staging/requests.py``).
"""

from __future__ import annotations

from typing import Any

from cosmic_horizons_lab.protocol.events import ENVELOPE_SCHEMA
from cosmic_horizons_lab.protocol.states import Status

STATUS = [s.value for s in Status]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


TIME = {"type": "string", "format": "date-time", "pattern": r"(\+00:00|Z)$"}

#: One resource sample a job took of itself (``server/jobs/samples.py``): a GPU or, without one, the CPU.
_RESOURCE_READING: dict[str, Any] = {
    "id": {"type": "integer", "description": "The sample's id: the cursor of `after`"},
    "ts": TIME,
    "host": {"type": "string", "description": "The node (Slurm's node name, else the hostname)"},
    "kind": {"enum": ["gpu", "cpu"]},
    "uuid": {"type": ["string", "null"], "description": "The GPU's UUID (null for the CPU)"},
    "index": {"type": ["integer", "null"], "description": "The GPU's NVML index on its node"},
    "utilization": {"type": "number", "minimum": 0,
                    "description": "Percent: of the GPU; or of one CPU core (a process tree may exceed 100)"},
    "memory_bytes": {"type": "integer", "minimum": 0, "description": "GPU memory used, or the job's RSS"},
    "memory_total_bytes": {"type": ["integer", "null"]},
    "power_watts": {"type": ["number", "null"]},
    "temperature_c": {"type": ["number", "null"]},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message", "field"],
        "properties": {
            "error": {"type": "string", "description": "Machine-readable code, e.g. validation_error."},
            "message": {"type": "string"},
            "field": {"type": ["string", "null"], "description": "The offending field, dotted for params."},
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "user", "agent", "status", "progress", "priority", "params", "created_at", "correlation_id"],
        "properties": {
            "id": {"type": "string"},
            "user": {"type": "string"},
            "agent": {"type": "string"},
            "dataset_id": {"type": ["string", "null"]},
            "warnings": {"type": "array", "description": "Only in a submission's answer: what the job should hear "
                         "before it runs (GPUs asked of a server without one).",
                         "items": {"type": "object", "required": ["field", "message"],
                                   "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
            "status": {"enum": STATUS},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "priority": {"type": "integer", "minimum": 0, "maximum": 10},
            "params": {"type": "object"},
            "result": {"type": ["object", "null"]},
            "metrics": {"type": "object"},
            "error": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"]},
            "notes": {"type": ["string", "null"]},
            "webhook_url": {"type": ["string", "null"]},
            "correlation_id": {"type": "string"},
            "batch_id": {"type": ["string", "null"]},
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "backend": {"type": "string"},
            "backend_job_id": {"type": ["string", "null"]},
            "tacc_job_id": {"type": ["string", "null"], "description": "Alias of backend_job_id (the portal's name)."},
            "gpu_count": {"type": "integer"},
            "max_runtime_seconds": {"type": ["integer", "null"]},
            "estimated_runtime_minutes": {"type": ["integer", "null"]},
            "retries": {"type": "integer"},
            "attempts": {"type": "integer"},
            "created_at": TIME,
            "updated_at": TIME,
            "started_at": _nullable(TIME),
            "completed_at": _nullable(TIME),
            "output_url": {"type": "string"},
        },
    },
    "JobStatus": {
        "type": "object",
        "required": ["id", "status", "progress", "metrics", "output_url"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": STATUS},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "metrics": {"type": "object"},
            "output_url": {"type": "string"},
            "error": {"type": "string"},
            "backend_job_id": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"]},
            "updated_at": TIME,
        },
    },
    # the event envelope's one home is protocol/events.py (the event bus validates against it too)
    "Event": {k: v for k, v in ENVELOPE_SCHEMA.items() if k not in ("$schema", "$id")},
    "JobPage": {
        "type": "object",
        "required": ["items", "total", "page", "page_size"],
        "properties": {
            "items": {"type": "array", "items": _ref("Job")},
            "total": {"type": "integer", "minimum": 0},
            "page": {"type": "integer", "minimum": 1},
            "page_size": {"type": "integer", "minimum": 1},
        },
    },
    "Batch": {
        "type": "object",
        "required": ["batch_id", "jobs"],
        "properties": {
            "batch_id": {"type": "string"},
            "parallelLimit": {"type": ["integer", "null"]},
            "jobs": {"type": "array", "items": _ref("Job")},
        },
    },
    "Pipeline": {
        "type": "object",
        "required": ["pipeline_id", "stages", "jobs"],
        "properties": {
            "pipeline_id": {"type": "string"},
            "batch_id": {"type": "string"},
            "stages": {"type": "object", "additionalProperties": {"type": "string"}},
            "jobs": {"type": "array", "items": _ref("Job")},
        },
    },
    "Events": {
        "type": "object",
        "required": ["job_id", "events"],
        "properties": {"job_id": {"type": "string"}, "events": {"type": "array", "items": _ref("Event")}},
    },
    "Logs": {
        "type": "object",
        "required": ["job_id", "offset", "next_offset", "size", "data"],
        "properties": {
            "job_id": {"type": "string"},
            "status": {"enum": STATUS},
            "offset": {"type": "integer"},
            "next_offset": {"type": "integer"},
            "size": {"type": "integer"},
            "data": {"type": "string"},
        },
    },
    "Outputs": {
        "type": "object",
        "required": ["job_id", "files"],
        "properties": {
            "job_id": {"type": "string"},
            "status": {"enum": STATUS},
            "directory": {"type": "string"},
            "files": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["path", "size_bytes", "sha256", "url"],
                    "properties": {
                        "path": {"type": "string"},
                        "size_bytes": {"type": "integer"},
                        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "url": {"type": "string"},
                        "root_path": {"type": ["string", "null"], "description": "Path relative to the server root, for Lab's file browser"},
                    },
                },
            },
        },
    },
    "Agents": {
        "type": "object",
        "required": ["agents"],
        "properties": {
            "agents": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "params_schema", "requires_dataset"],
                    "properties": {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "requires_dataset": {"type": "boolean"},
                        "params_schema": {"type": "object"},
                    },
                },
            }
        },
    },
    "Datasets": {
        "type": "object",
        "required": ["datasets"],
        "properties": {
            "datasets": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "format", "size_bytes"],
                    "properties": {
                        "id": {"type": "string"},
                        "format": {"type": "string"},
                        "size_bytes": {"type": "integer"},
                        "source": {"enum": ["archive", "demo", "simulated"]},
                        "modified_at": _nullable(TIME),
                        "description": {"type": "string"},
                        "shape": {"type": ["object", "null"], "description": "From the data itself; null until readable"},
                    },
                },
            }
        },
    },
    "Gpus": {
        "type": "object",
        "required": ["available", "gpus", "nodes"],
        "properties": {
            "available": {"type": "boolean"},
            "reason": {"type": ["string", "null"]},
            "gpus": {"type": "array", "items": {"type": "object"}},
            "nodes": {
                "type": "array",
                "description": "GPUs per node: the server's host (its own NVML sampler) and every node a job "
                "sampled itself on recently, each reading with the job holding it (its id for the caller's jobs)",
                "items": {
                    "type": "object",
                    "required": ["host", "source", "gpus"],
                    "properties": {
                        "host": {"type": "string"},
                        "source": {"enum": ["server", "jobs"]},
                        "gpus": {"type": "array", "items": {
                            "type": "object",
                            "required": ["kind", "uuid", "index", "utilization", "job_id", "held"],
                            "properties": {
                                **{k: v for k, v in _RESOURCE_READING.items() if k not in ("id",)},
                                "name": {"type": ["string", "null"]},
                                "ts": _nullable(TIME),
                                "job_id": {"type": ["string", "null"],
                                           "description": "The caller's job last sampled on it (null: none, or "
                                           "another user's)"},
                                "job_status": {"type": ["string", "null"]},
                                "held": {"type": "boolean", "description": "Whether an active job (anyone's) holds it"},
                            },
                        }},
                    },
                },
            },
        },
    },
    "JobResourceSample": {
        "type": "object",
        "required": list(_RESOURCE_READING),
        "properties": _RESOURCE_READING,
    },
    "JobResources": {
        "type": "object",
        "required": ["job_id", "samples", "next_after"],
        "properties": {
            "job_id": {"type": "string"},
            "status": {"enum": STATUS},
            "samples": {"type": "array", "items": _ref("JobResourceSample")},
            "next_after": {"type": "integer", "minimum": 0, "description": "Pass as `after` for the next samples"},
        },
    },
    "GpuHistory": {
        "type": "object",
        "required": ["available", "interval_seconds", "samples", "gpus"],
        "properties": {
            "available": {"type": "boolean"},
            "reason": {"type": ["string", "null"]},
            "interval_seconds": {"type": "number"},
            "gpus": {"type": "array", "items": {"type": "object"}},
            "samples": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["ts", "gpus"],
                    "properties": {"ts": TIME, "gpus": {"type": "array", "items": {"type": "object"}}},
                },
            },
        },
    },
    "Resources": {
        "type": "object",
        "required": ["backend", "pools"],
        "properties": {
            "backend": {"type": "string"},
            "pools": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "backend", "gpu_model", "total", "free"],
                    "properties": {
                        "name": {"type": "string"},
                        "backend": {"type": "string"},
                        "gpu_model": {"type": "string"},
                        "total": {"type": "integer"},
                        "free": {"type": "integer"},
                        "memory_mb": {"type": ["integer", "null"]},
                        "detail": {"type": "object"},
                    },
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "backend", "store"],
        "properties": {
            "status": {"enum": ["ok", "degraded"]},
            "version": {"type": "string"},
            "backend": {"type": "object", "required": ["name", "ok"]},
            "store": {"type": "object", "required": ["ok"]},
            "gpus": {"type": "object"},
            "subscribers": {"type": "integer"},
            "event_bus": {"type": "object", "description": "Only with event_bus_url: the NATS bridge.",
                          "required": ["stream", "connected", "cursor", "lag"],
                          "properties": {"stream": {"type": "string"}, "connected": {"type": "boolean"},
                                         "cursor": {"type": "integer", "description": "Last event id in the stream."},
                                         "lag": {"type": "integer", "description": "Committed events not yet in it."},
                                         "published": {"type": "integer"}, "dead_letters": {"type": "integer"},
                                         "last_error": {"type": ["string", "null"]}}},
            "last_tick_age_seconds": {"type": ["number", "null"]},
        },
    },
}


_NUM = {"type": ["number", "null"]}
_SUMMARY = {
    "type": "object",
    "required": ["total_jobs", "completed", "failed", "cancelled", "success_rate", "average_runtime_minutes",
                 "gpu_hours", "gpu_utilization", "cost_usd", "su_charged"],
    "properties": {
        "total_jobs": {"type": "integer"}, "completed": {"type": "integer"}, "failed": {"type": "integer"},
        "cancelled": {"type": "integer"}, "active": {"type": "integer"},
        "success_rate": {**_NUM, "description": "completed / (completed + failed); null with neither"},
        "average_runtime_minutes": _NUM, "gpu_hours": {"type": "number"},
        "gpu_utilization": {**_NUM, "description": "Mean % of the GPU samples the jobs took of themselves "
                            "(else the server host's telemetry during their runs); null if none"},
        "gpu_utilization_samples": {"type": "integer"},
        "measured_jobs": {"type": "integer", "description": "Ended jobs whose GPU-hours, cost and SUs come from "
                          "their own GPU samples (sampled GPUs × wall time) rather than gpu_count × wall time"},
        "cost_usd": {"type": "number"}, "su_charged": {"type": "number"},
    },
}
_BUDGET = {
    "type": "object", "required": ["budget_su", "used_su", "reserved_su", "remaining_su"],
    "properties": {"budget_su": _NUM, "used_su": {"type": "number"}, "reserved_su": {"type": "number"},
                   "remaining_su": _NUM},
}
SCHEMAS.update({
    "StagingStatus": {
        "type": "object",
        "required": ["transfer_id", "dataset_id", "target_resource", "status", "progress", "bytes_transferred", "total_bytes"],
        "properties": {
            "transfer_id": {"type": ["string", "null"]},
            "dataset_id": {"type": "string"},
            "target_resource": {"type": ["string", "null"]},
            "priority": {"enum": ["high", "normal"]},
            "status": {"enum": ["not_staged", "queued", "running", "verifying", "completed", "failed", "cancelled"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "bytes_transferred": {"type": "integer"},
            "total_bytes": {"type": "integer"},
            "rate_bytes_per_second": _NUM,
            "eta_seconds": _NUM,
            "phase": {"type": "string"},
            "convert": {"type": ["string", "null"]},
            "sha256": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"]},
            "resumed_from": {"type": "integer"},
            "staged_path": {"type": ["string", "null"]},
            "stale": {"type": "boolean", "description": "Older than the target's purge age: staged again on use"},
            "created_at": _nullable(TIME), "started_at": _nullable(TIME), "completed_at": _nullable(TIME),
        },
    },
    "TransferEstimate": {
        "type": "object",
        "required": ["dataset_id", "target_resource", "size_bytes", "throughput_bytes_per_second", "estimated_seconds", "basis"],
        "properties": {
            "dataset_id": {"type": "string"}, "target_resource": {"type": "string"}, "size_bytes": {"type": "integer"},
            "throughput_bytes_per_second": {"type": "number"}, "estimated_seconds": {"type": "number"},
            "estimated_minutes": {"type": "number"}, "basis": {"enum": ["measured", "default"]},
            "samples": {"type": "integer"},
        },
    },
    "DatasetValidation": {
        "type": "object", "required": ["dataset_id", "valid", "format", "size_bytes", "flagged_fraction", "problems"],
        "properties": {
            "dataset_id": {"type": "string"}, "valid": {"type": "boolean"}, "format": {"type": "string"},
            "size_bytes": {"type": "integer"}, "shape": {"type": ["object", "null"]},
            "flagged_fraction": _NUM, "outlier_fraction": _NUM, "blt_order": {"type": ["string", "null"]},
            "problems": {"type": "array", "items": {"type": "string"}},
            "checked_at": TIME, "cached": {"type": "boolean"},
        },
    },
    "DatasetLayout": {
        "type": "object", "required": ["dataset_id", "recommendations"],
        "properties": {
            "dataset_id": {"type": "string"}, "format": {"type": ["string", "null"]},
            "blt_order": {"type": ["string", "null"]}, "size_bytes": {"type": ["integer", "null"]},
            "recommendations": {"type": "array", "items": {"type": "object", "required": ["id", "title", "reason", "action"]}},
            "staging_request": {"anyOf": [_ref("StageRequest"), {"type": "null"}]},
        },
    },
    "Tips": {
        "type": "object", "required": ["tips", "estimated_runtime_minutes", "estimated_cost_usd", "estimated_su"],
        "properties": {
            "tips": {"type": "array", "items": {
                "type": "object", "required": ["severity", "field", "message", "reasoning"],
                "properties": {"severity": {"enum": ["info", "warning", "error"]}, "field": {"type": "string"},
                               "message": {"type": "string"}, "reasoning": {"type": "string"}, "basis": {"type": "object"}}}},
            "estimated_runtime_minutes": _NUM, "runtime_range_minutes": {"type": ["array", "null"]},
            "estimated_cost_usd": _NUM, "estimated_su": _NUM, "estimated_gpu_hours": _NUM, "budget": _BUDGET,
        },
    },
    "Metrics": {
        "allOf": [_SUMMARY],
        "type": "object", "required": ["by_agent", "by_period", "budget", "period"],
        "properties": {
            "user": {"type": "string"}, "period": {"enum": ["day", "week", "month"]},
            "from_date": _nullable(TIME), "to_date": _nullable(TIME),
            "gpu_hourly_rate": {"type": "number"}, "su_rate": {"type": "number"}, "queue": {"type": "string"},
            "budget": _BUDGET,
            "by_agent": {"type": "object", "additionalProperties": _SUMMARY},
            "by_period": {"type": "array", "items": {"allOf": [_SUMMARY], "required": ["period"]}},
        },
    },
    "WebhookDeliveries": {
        "type": "object", "required": ["job_id", "deliveries"],
        "properties": {
            "job_id": {"type": "string"}, "webhook_url": {"type": ["string", "null"]},
            "deliveries": {"type": "array", "items": {
                "type": "object", "required": ["id", "event", "url", "status", "attempts", "log"],
                "properties": {
                    "id": {"type": "integer"}, "event": {"type": "string"}, "url": {"type": "string"},
                    "status": {"enum": ["pending", "delivered", "failed"]}, "attempts": {"type": "integer"},
                    "last_status_code": {"type": ["integer", "null"]}, "last_error": {"type": ["string", "null"]},
                    "created_at": TIME, "delivered_at": _nullable(TIME), "next_attempt_at": _nullable(TIME),
                    "log": {"type": "array", "items": {"type": "object"}},
                }}},
        },
    },
    "WebhookSecret": {
        "type": "object", "required": ["secret", "header", "algorithm"],
        "properties": {"secret": {"type": "string"}, "created_at": TIME, "header": {"type": "string"},
                       "algorithm": {"type": "string"}},
    },
})
