"""The OpenAPI description of ``GET slurm/queue`` (the caller's whole Slurm queue).

Kept beside the other areas' descriptions (``server/sky/openapi.py``): ``server/api/openapi.py``
merges ``slurm_queue_paths()`` into its paths and ``SLURM_QUEUE_SCHEMAS`` into its components.
"""

from __future__ import annotations

from typing import Any

_TEXT_OR_NULL = {"type": ["string", "null"]}

SLURM_QUEUE_SCHEMAS: dict[str, Any] = {
    "SlurmQueueJob": {
        "type": "object",
        "required": ["id", "state", "reason", "time_used", "time_limit", "nodes", "nodelist", "partition",
                     "user", "name", "ours", "job_id"],
        "properties": {
            "id": {"type": "string", "description": "Slurm's job id (an array element: 123_4)"},
            "state": {"type": "string", "examples": ["PENDING", "RUNNING"]},
            "reason": {**_TEXT_OR_NULL, "description": "Why a pending job waits (Resources, Priority…)"},
            "time_used": {"type": "string", "description": "As Slurm writes it: [D-]HH:MM:SS or M:SS"},
            "time_limit": {"type": "string", "examples": ["1:00:00", "UNLIMITED"]},
            "nodes": {"type": ["integer", "null"]},
            "nodelist": _TEXT_OR_NULL,
            "partition": {"type": "string"},
            "user": {"type": "string"},
            "name": {"type": "string"},
            "ours": {"type": "boolean", "description": "One of the caller's Cosmic Horizons jobs"},
            "job_id": {**_TEXT_OR_NULL, "description": "That job's id, when ours"},
        },
    },
    "SlurmQueue": {
        "type": "object",
        "required": ["backend", "jobs"],
        "properties": {
            "backend": {"const": "slurm"},
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/SlurmQueueJob"}},
        },
    },
}


def slurm_queue_paths() -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "/slurm/queue": {"get": {
            "summary": "The caller's whole Slurm queue (squeue --me), our own jobs marked; slurm backend only",
            "responses": {
                "200": {"description": "The queue", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SlurmQueue"}}}},
                "409": {"description": "The server's backend is not Slurm", **error},
                "503": {"description": "squeue did not answer", **error},
            },
        }},
    }
