"""The OpenAPI 3.1 document of the REST API, served at ``openapi.json``.

Nothing a request may carry is retyped here: bodies, query parameters and headers are the
JSON Schema constants the validators read their limits from (``requests.py``: batches,
pipelines, listings, events, logs, GPU history, the Idempotency-Key; ``submission.py``: the
submission and each agent's parameters, ``cls.schema()``; ``staging/requests.py``: staging and
transfer estimates; ``accounting/usage.py``: the metrics periods). The responses are
``schemas.py``, which the test suite checks every response against;
``tests/test_openapi_contract.py`` checks the requests' constraints against a running server.
"""

from __future__ import annotations

import copy
from typing import Any

from cosmic_horizons_lab._version import __version__
from cosmic_horizons_lab.protocol.api import API_PREFIX
from cosmic_horizons_lab.server.accounting.usage import PERIODS
from cosmic_horizons_lab.server.api import requests
from cosmic_horizons_lab.server.api.body import MAX_DEPTH
from cosmic_horizons_lab.server.api.schemas import SCHEMAS, _ref
from cosmic_horizons_lab.server.api.submission import (
    SUBMISSION_COMPONENTS,
    params_schemas,
    submission_schema,
)
from cosmic_horizons_lab.server.api.slurm_queue import SLURM_QUEUE_SCHEMAS, slurm_queue_paths
from cosmic_horizons_lab.server.sky.openapi import SKY_SCHEMAS, sky_paths
from cosmic_horizons_lab.server.analytics.openapi import USAGE_SCHEMAS, usage_paths
from cosmic_horizons_lab.server.staging.requests import ESTIMATE_BODY, STAGE_BODY, STAGING_QUERY

#: GET jobs/metrics (``accounting/usage.py`` parses it; ``period`` is its ``PERIODS``).
METRICS_QUERY: dict[str, dict[str, Any]] = {
    "period": {"type": "string", "enum": list(PERIODS), "default": PERIODS[0], "description": "bucket of by_period"},
    "agent": requests.JOB_QUERY["agent"],
    "from_date": requests.JOB_QUERY["from_date"],
    "to_date": requests.JOB_QUERY["to_date"],
}


def request_schemas(backend: str | None = None) -> dict[str, Any]:
    """The components that describe request bodies, from the validators' own constants."""
    return {
        **{name: submission_schema(stage=stage, backend=backend) for name, stage in SUBMISSION_COMPONENTS.items()},
        **params_schemas(),
        "BatchRequest": requests.BATCH_BODY,
        "PipelineRequest": requests.PIPELINE_BODY,
        "StageRequest": STAGE_BODY,
        "TransferEstimateRequest": ESTIMATE_BODY,
    }


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request or unknown field", 403: "Not authorised", 404: "Unknown job (or another user's)",
            409: "Conflict with the job's state", 413: "Body too large", 422: "Invalid value",
            429: "Quota exceeded", 503: "Backend unavailable",
            426: "Not a WebSocket upgrade request (a plain GET): upgrade to a WebSocket",
            402: "SU budget exceeded (the body carries estimated_su, remaining_su, budget_su)"}
    return {str(c): _json("Error", text[c]) for c in codes}


def _param(name: str, where: str = "query", schema: dict[str, Any] | None = None, required: bool = False) -> dict[str, Any]:
    schema = dict(schema or {"type": "string"})
    param = {"name": name, "in": where, "required": required}
    if "description" in schema:
        param["description"] = schema.pop("description")
    if schema.get("type") == "array":  # a list in one parameter: a,b,c
        param.update(style="form", explode=False)
    return {**param, "schema": schema}


def _query(spec: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Query parameters, one per entry of a validator's query schema."""
    return [_param(name, schema=schema) for name, schema in spec.items()]


JOB_ID = _param("job_id", "path", requests.RESOURCE_ID, required=True)
DATASET_ID = _param("dataset_id", "path", requests.RESOURCE_ID, required=True)
HEADERS = [
    _param("Idempotency-Key", "header", requests.IDEMPOTENCY_KEY),
    _param("X-Correlation-ID", "header", {
        "type": "string", "description": "Echoed and kept with the job and its events when it matches "
        "^[A-Za-z0-9._:\\-]{1,128}$; otherwise ignored (the server makes one)"}),
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
            "requestBody": body(_ref("BatchRequest")),
            "responses": {"201": _json("Batch", "Queued"), **_errors(400, 402, 413, 422, 429)},
        }},
        "/pipelines": {"post": {
            "summary": "Submit stages with dependencies; each stage reads its parents' outputs",
            "requestBody": body(_ref("PipelineRequest")),
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
            JOB_ID, *_query(requests.EVENTS_QUERY)],
            "responses": {"200": _json("Events", "Events after `after`"), **_errors(400, 404)}}},
        "/jobs/{job_id}/resources": {"get": {
            "summary": "The job's resource samples: per GPU (uuid, host, utilisation, memory, power) or its CPU and RSS",
            "parameters": [JOB_ID, *_query(requests.RESOURCES_QUERY)],
            "responses": {"200": _json("JobResources", "Samples after `after`"), **_errors(400, 404)}}},
        "/jobs/{job_id}/logs": {"get": {"summary": "Tail the job's log", "parameters": [
            JOB_ID, *_query(requests.LOGS_QUERY)],
            "responses": {"200": _json("Logs", "A slice of stdout.log"), **_errors(400, 404)}}},
        "/jobs/{job_id}/outputs": {"get": {"summary": "Output files with sizes, SHA-256 and URLs", "parameters": [JOB_ID],
                                           "responses": {"200": _json("Outputs", "Files"), **_errors(404)}}},
        "/jobs/{job_id}/outputs/{path}": {"get": {"summary": "Download one output file", "parameters": [
            JOB_ID, _param(requests.PATH_PARAMS["relative"][0], "path", requests.OUTPUT_PATH, required=True)],
            "responses": {"200": {"description": "The file, with the content type its name suggests "
                                  "(application/octet-stream when none)", "content": {"*/*": {}}}, **_errors(404)}}},
        "/jobs/history/list": {"get": {"summary": "The caller's jobs, newest first (the same filters as jobs/search)",
                                       "parameters": _query(requests.JOB_QUERY),
                                       "responses": {"200": _json("JobPage", "A page"), **_errors(400)}}},
        "/jobs/search": {"get": {"summary": "Filtered history", "parameters": _query(requests.JOB_QUERY),
            "responses": {"200": _json("JobPage", "A page"), **_errors(400)}}},
        "/jobs/dataset/stage": {"post": {
            "summary": "Stage a dataset to a target (chunked copy, SHA-256 verified; staging.* events)",
            "requestBody": body(_ref("StageRequest")),
            "responses": {"202": _json("StagingStatus", "Queued"),
                          "200": _json("StagingStatus", "Already staged (fresh) or in flight"),
                          **_errors(400, 403, 404, 413, 422)}}},
        "/jobs/dataset/estimate-transfer": {"post": {
            "summary": "Transfer time from measured throughput to the target (or the documented default)",
            "requestBody": body(_ref("TransferEstimateRequest")),
            "responses": {"200": _json("TransferEstimate", "Estimate"), **_errors(400, 403, 404, 413, 422)}}},
        "/jobs/dataset/{dataset_id}/staging-status": {
            "get": {"summary": "The newest staging of the dataset", "parameters": [DATASET_ID, *_query(STAGING_QUERY)],
                    "responses": {"200": _json("StagingStatus", "Status"), **_errors(403, 404, 422)}},
            "delete": {"summary": "Cancel the staging in progress", "parameters": [DATASET_ID, *_query(STAGING_QUERY)],
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
            "parameters": _query(METRICS_QUERY),
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
                                  "parameters": _query(requests.GPU_HISTORY_QUERY),
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
            "parameters": _query(requests.STREAM_QUERY),
            "responses": {"101": {"description": "Switching protocols"}, **_errors(400, 426)}}},
    }


def _with_common_errors(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation can answer 403 (jupyter-server's authorizer is consulted on each) and 400
    (a path or query argument that is not UTF-8 or holds a NUL byte, named in ``field``)."""
    for item in paths.values():
        for op in item.values():
            op["responses"].setdefault("403", _json("Error", "Not authenticated, or not authorised"))
            op["responses"].setdefault("400", _json("Error", "A malformed argument (not UTF-8, a NUL byte, too long)"))
    return paths


def openapi_document(api_url: str = "/" + API_PREFIX, backend: str | None = None) -> dict[str, Any]:
    """The document, built afresh (a copy: whoever changes it changes none of the constants).

    With ``backend``, a submission's ``agent`` lists only the agents that backend runs (the
    document a server serves); without it, every agent whose extra is installed.
    """
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {
            "title": "cosmic-horizons-lab",
            "version": __version__,
            "description": "Submit and watch GPU reprocessing jobs. Authentication: the Jupyter server's "
            "(token header `Authorization: token …`, or the Lab's cookie with XSRF). Every error is "
            "`{\"error\", \"message\", \"field\"}`. Every JSON body: integers within the 64-bit range, no "
            f"nesting deeper than {MAX_DEPTH}, no NUL byte or lone surrogate in a string (400 or 422 naming "
            "the field otherwise).",
            "license": {"name": "BSD-3-Clause", "identifier": "BSD-3-Clause"},
        },
        "servers": [{"url": api_url.rstrip("/")}],
        "security": [{"token": []}],
        "paths": _with_common_errors({**_paths(), **sky_paths(), **slurm_queue_paths(), **usage_paths()}),
        "components": {
            "schemas": {**SCHEMAS, **request_schemas(backend), **SKY_SCHEMAS, **SLURM_QUEUE_SCHEMAS,
                        **USAGE_SCHEMAS},
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization"}},
        },
    })
