"""The OpenAPI 3.1 document of the REST API, served at ``openapi.json``.

The test suite validates every response it receives against this document,
so it cannot drift from what the handlers send.
"""

from __future__ import annotations

from typing import Any

from cosmic_horizons_lab._version import __version__
from cosmic_horizons_lab.protocol.api import API_PREFIX
from cosmic_horizons_lab.protocol.states import Status

STATUS = [s.value for s in Status]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


TIME = {"type": "string", "format": "date-time", "pattern": r"(\+00:00|Z)$"}

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
    "Submission": {
        "type": "object",
        "required": ["agent"],
        "additionalProperties": False,
        "properties": {
            "agent": {"type": "string", "examples": ["AlphaCal", "Script"]},
            "dataset_id": {"type": "string"},
            "params": {
                "type": "object",
                "description": "Agent parameters; GET agents gives each agent's JSON Schema.",
                "properties": {
                    "gpu_count": {"type": "integer", "minimum": 0, "maximum": 8},
                    "max_runtime": {"type": "string", "examples": ["04:00:00", "48h", "90m"]},
                    "rfi_strategy": {"type": "string"},
                },
            },
            "priority": {"type": "integer", "minimum": 0, "maximum": 10, "default": 5},
            "webhook_url": {"type": "string", "format": "uri"},
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "notes": {"type": "string"},
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
    "Event": {
        "type": "object",
        "required": ["id", "type", "job_id", "user", "ts", "correlation_id", "payload"],
        "properties": {
            "id": {"type": "integer"},
            "type": {"type": "string", "examples": ["job.submitted", "job.progress", "job.completed"]},
            "job_id": {"type": ["string", "null"]},
            "user": {"type": "string"},
            "ts": TIME,
            "correlation_id": {"type": ["string", "null"]},
            "payload": {"type": "object"},
        },
    },
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
        "required": ["available", "gpus"],
        "properties": {
            "available": {"type": "boolean"},
            "reason": {"type": ["string", "null"]},
            "gpus": {"type": "array", "items": {"type": "object"}},
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
        "gpu_utilization": {**_NUM, "description": "Mean % of telemetry samples during the jobs' runs; null if none"},
        "gpu_utilization_samples": {"type": "integer"},
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
    "StageRequest": {
        "type": "object", "required": ["dataset_id"], "additionalProperties": False,
        "properties": {
            "dataset_id": {"type": "string"},
            "target_resource": {"type": "string", "default": "tacc_scratch"},
            "priority": {"enum": ["high", "normal"], "default": "normal"},
            "convert": {"enum": ["uvh5", None], "description": "Convert to a GPU-friendly layout while staging"},
            "force": {"type": "boolean", "description": "Stage again even if a fresh copy exists"},
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


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request or unknown field", 403: "Not authorised", 404: "Unknown job (or another user's)",
            409: "Conflict with the job's state", 413: "Body too large", 422: "Invalid value",
            429: "Quota exceeded", 503: "Backend unavailable",
            402: "SU budget exceeded (the body carries estimated_su, remaining_su, budget_su)"}
    return {str(c): _json("Error", text[c]) for c in codes}


def _param(name: str, where: str = "query", schema: dict[str, Any] | None = None, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema or {"type": "string"}}


JOB_ID = _param("job_id", "path", required=True)
DATASET_ID = _param("dataset_id", "path", required=True)
PAGING = [_param("page", schema={"type": "integer", "minimum": 1}), _param("page_size", schema={"type": "integer", "minimum": 1, "maximum": 200})]
HEADERS = [
    _param("Idempotency-Key", "header"),
    _param("X-Correlation-ID", "header"),
]


def _paths() -> dict[str, Any]:
    body = lambda schema: {"required": True, "content": {"application/json": {"schema": schema}}}  # noqa: E731
    return {
        "/jobs/submit": {"post": {
            "summary": "Submit one job", "parameters": HEADERS, "requestBody": body(_ref("Submission")),
            "responses": {"201": _json("Job", "Queued"), "200": _json("Job", "The job an Idempotency-Key already made"),
                          **_errors(400, 402, 413, 422, 429)},
        }},
        "/jobs/submit-batch": {"post": {
            "summary": "Submit many jobs; at most parallelLimit run at once",
            "requestBody": body({"type": "object", "required": ["jobs"], "properties": {
                "jobs": {"type": "array", "items": _ref("Submission")}, "parallelLimit": {"type": "integer", "minimum": 1}}}),
            "responses": {"201": _json("Batch", "Queued"), **_errors(400, 402, 413, 422, 429)},
        }},
        "/pipelines": {"post": {
            "summary": "Submit stages with dependencies; each stage reads its parents' outputs",
            "requestBody": body({"type": "object", "required": ["stages"], "properties": {
                "stages": {"type": "array", "items": {"allOf": [_ref("Submission")], "properties": {"name": {"type": "string"}}}},
                "parallelLimit": {"type": "integer", "minimum": 1}}}),
            "responses": {"201": _json("Pipeline", "Queued"), **_errors(400, 402, 413, 422, 429)},
        }},
        "/jobs/{job_id}": {
            "get": {"summary": "The whole job record", "parameters": [JOB_ID],
                    "responses": {"200": _json("Job", "The job"), **_errors(404)}},
            "delete": {"summary": "Cancel", "parameters": [JOB_ID],
                       "responses": {"200": _json("Job", "Cancelled, or cancelling"), **_errors(404, 409, 503)}},
        },
        "/jobs/{job_id}/status": {"get": {"summary": "Status, progress and metrics", "parameters": [JOB_ID],
                                          "responses": {"200": _json("JobStatus", "Status"), **_errors(404)}}},
        "/jobs/{job_id}/events": {"get": {"summary": "Replay a job's events", "parameters": [
            JOB_ID, _param("after", schema={"type": "integer", "minimum": 0}), _param("limit", schema={"type": "integer"})],
            "responses": {"200": _json("Events", "Events after `after`"), **_errors(400, 404)}}},
        "/jobs/{job_id}/logs": {"get": {"summary": "Tail the job's log", "parameters": [
            JOB_ID, _param("offset", schema={"type": "integer", "minimum": 0}), _param("limit", schema={"type": "integer"})],
            "responses": {"200": _json("Logs", "A slice of stdout.log"), **_errors(400, 404)}}},
        "/jobs/{job_id}/outputs": {"get": {"summary": "Output files with sizes, SHA-256 and URLs", "parameters": [JOB_ID],
                                           "responses": {"200": _json("Outputs", "Files"), **_errors(404)}}},
        "/jobs/{job_id}/outputs/{path}": {"get": {"summary": "Download one output file", "parameters": [
            JOB_ID, _param("path", "path", required=True)],
            "responses": {"200": {"description": "The file", "content": {"application/octet-stream": {}}}, **_errors(404)}}},
        "/jobs/history/list": {"get": {"summary": "The caller's jobs, newest first", "parameters": PAGING,
                                       "responses": {"200": _json("JobPage", "A page"), **_errors(400)}}},
        "/jobs/search": {"get": {"summary": "Filtered history", "parameters": [
            _param("agent"), _param("dataset_id"), _param("status"), _param("batch_id"),
            _param("from_date", schema={"type": "string", "format": "date-time"}),
            _param("to_date", schema={"type": "string", "format": "date-time"}), *PAGING],
            "responses": {"200": _json("JobPage", "A page"), **_errors(400)}}},
        "/jobs/dataset/stage": {"post": {
            "summary": "Stage a dataset to a target (chunked copy, SHA-256 verified; staging.* events)",
            "requestBody": body(_ref("StageRequest")),
            "responses": {"202": _json("StagingStatus", "Queued"),
                          "200": _json("StagingStatus", "Already staged (fresh) or in flight"),
                          **_errors(400, 403, 404, 413, 422)}}},
        "/jobs/dataset/estimate-transfer": {"post": {
            "summary": "Transfer time from measured throughput to the target (or the documented default)",
            "requestBody": body({"type": "object", "required": ["dataset_id"], "properties": {
                "dataset_id": {"type": "string"}, "target_resource": {"type": "string"}}}),
            "responses": {"200": _json("TransferEstimate", "Estimate"), **_errors(400, 403, 404, 413, 422)}}},
        "/jobs/dataset/{dataset_id}/staging-status": {
            "get": {"summary": "The newest staging of the dataset", "parameters": [DATASET_ID, _param("target_resource")],
                    "responses": {"200": _json("StagingStatus", "Status"), **_errors(403, 404, 422)}},
            "delete": {"summary": "Cancel the staging in progress", "parameters": [DATASET_ID, _param("target_resource")],
                       "responses": {"200": _json("StagingStatus", "Cancelled"), **_errors(403, 404, 409, 422)}}},
        "/jobs/dataset/{dataset_id}/validate": {"get": {
            "summary": "Open the data (pyuvdata): format, shape, size, flagged fraction, problems",
            "parameters": [DATASET_ID], "responses": {"200": _json("DatasetValidation", "Report"), **_errors(404)}}},
        "/jobs/dataset/{dataset_id}/optimize": {"get": {
            "summary": "Layout recommendations for GPU processing (and the staging request that applies them)",
            "parameters": [DATASET_ID], "responses": {"200": _json("DatasetLayout", "Recommendations"), **_errors(404)}}},
        "/jobs/optimize": {"post": {
            "summary": "Tips for a submission before sending it: runtime, GPUs, rfi_strategy, max_runtime, cost",
            "requestBody": body(_ref("Submission")),
            "responses": {"200": _json("Tips", "Tips"), **_errors(400, 413, 422)}}},
        "/jobs/metrics": {"get": {
            "summary": "Success rate, runtime, GPU-hours, measured GPU utilisation, cost; by agent and period",
            "parameters": [_param("period", schema={"enum": ["day", "week", "month"]}), _param("agent"),
                           _param("from_date", schema={"type": "string", "format": "date-time"}),
                           _param("to_date", schema={"type": "string", "format": "date-time"})],
            "responses": {"200": _json("Metrics", "Metrics"), **_errors(400)}}},
        "/jobs/{job_id}/webhooks": {"get": {"summary": "The job's webhook delivery log", "parameters": [JOB_ID],
                                            "responses": {"200": _json("WebhookDeliveries", "Deliveries"), **_errors(404)}}},
        "/webhooks/secret": {
            "get": {"summary": "Your webhook signing secret (HMAC-SHA256; made on first use)",
                    "responses": {"200": _json("WebhookSecret", "Secret")}},
            "post": {"summary": "Replace your webhook signing secret", "responses": {"200": _json("WebhookSecret", "Secret")}}},
        "/jobs/resources/available": {"get": {"summary": "GPU pools", "responses": {"200": _json("Resources", "Pools")}}},
        "/agents": {"get": {"summary": "Agents and their parameter schemas", "responses": {"200": _json("Agents", "Agents")}}},
        "/datasets": {"get": {"summary": "Registered datasets", "responses": {"200": _json("Datasets", "Datasets")}}},
        "/gpus": {"get": {"summary": "GPU inventory with current utilisation", "responses": {"200": _json("Gpus", "GPUs")}}},
        "/gpus/history": {"get": {"summary": "Telemetry samples for the heatmap",
                                  "parameters": [_param("seconds", schema={"type": "integer", "minimum": 1})],
                                  "responses": {"200": _json("GpuHistory", "Samples"), **_errors(400)}}},
        "/events/latest": {"get": {"summary": "The caller's newest event id (where a live-only stream starts)",
                                   "responses": {"200": {"description": "Cursor", "content": {"application/json": {"schema": {
                                       "type": "object", "required": ["last_event_id"],
                                       "properties": {"last_event_id": {"type": "integer", "minimum": 0}}}}}}}}},
        "/health": {"get": {"summary": "Liveness and backend health", "responses": {"200": _json("Health", "Health")}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1",
                                                                                     "content": {"application/json": {}}}}}},
        "/events": {"get": {
            "summary": "WebSocket: the caller's live events (upgrade); each message is one Event or a list of Events",
            "parameters": [_param("after", schema={"type": "integer", "minimum": 0})],
            "responses": {"101": {"description": "Switching protocols"}, **_errors(400)}}},
    }


def _with_auth_errors(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation can answer 403: jupyter-server's authorizer is consulted on each."""
    for item in paths.values():
        for op in item.values():
            op["responses"].setdefault("403", _json("Error", "Not authenticated, or not authorised"))
    return paths


def openapi_document(api_url: str = "/" + API_PREFIX) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cosmic-horizons-lab",
            "version": __version__,
            "description": "Submit and watch GPU reprocessing jobs. Authentication: the Jupyter server's "
            "(token header `Authorization: token …`, or the Lab's cookie with XSRF).",
            "license": {"name": "BSD-3-Clause", "identifier": "BSD-3-Clause"},
        },
        "servers": [{"url": api_url.rstrip("/")}],
        "security": [{"token": []}],
        "paths": _with_auth_errors(_paths()),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization"}},
        },
    }
