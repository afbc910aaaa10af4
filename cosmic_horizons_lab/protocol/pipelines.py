"""The pipeline definition file (``*.pipeline.json``): a pipeline saved in the user's tree.

The sidebar's composer writes it and opens it again to re-run; git versions it like any other
file. Its ``stages`` are the body of ``POST pipelines`` as they are, so re-running one is
submitting its stages: what a stage may say in detail (an agent's parameters) is checked by the
server then, not by this schema, which fixes only the envelope and the stage's shape.
"""

from __future__ import annotations

from typing import Any

#: The ``format`` a definition file names (the composer's PIPELINE_FORMAT in js/src/composer/composer.ts).
PIPELINE_FORMAT = "cosmic-horizons-pipeline"
PIPELINE_VERSION = 1
#: What the file's name ends with.
PIPELINE_SUFFIX = ".pipeline.json"

PIPELINE_FILE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Cosmic Horizons pipeline definition",
    "type": "object",
    "required": ["format", "version", "stages"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": PIPELINE_FORMAT},
        "version": {"const": PIPELINE_VERSION},
        "parallelLimit": {"type": ["integer", "null"], "minimum": 1},
        "stages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "agent"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 255},
                    "agent": {"type": "string", "minLength": 1},
                    "dataset_id": {"type": ["string", "null"]},
                    "params": {"type": "object"},
                    "priority": {"type": "integer"},
                    "depends_on": {"type": "array", "items": {"type": "string", "minLength": 1}},
                    "notes": {"type": ["string", "null"]},
                    "webhook_url": {"type": ["string", "null"]},
                },
            },
        },
    },
}


def pipeline_body(definition: dict[str, Any]) -> dict[str, Any]:
    """The ``POST pipelines`` body that re-runs a definition file's pipeline."""
    body: dict[str, Any] = {"stages": definition["stages"]}
    if definition.get("parallelLimit") is not None:
        body["parallelLimit"] = definition["parallelLimit"]
    return body
