"""The sky routes' part of the OpenAPI document: their paths, and the schemas of what they answer
(the request bodies are the validators' own constants, ``requests.py``)."""

from __future__ import annotations

from typing import Any

from cosmic_horizons_lab.server.sky.coverage import MAX_ORDER
from cosmic_horizons_lab.server.sky.requests import (
    ANNOTATION_BODY,
    REGION_FORMATS,
    SNAPSHOT_BODY,
    VIEW_SCHEMA,
)

_TIME = {"type": "string", "format": "date-time", "pattern": r"(\+00:00|Z)$"}
_NUM = {"type": ["number", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SKY_SCHEMAS: dict[str, Any] = {
    "Moc": {
        "type": "object",
        "description": "IVOA MOC 2.0, JSON serialisation: HEALPix (nested) cell indices by order.",
        "propertyNames": {"pattern": "^[0-9]{1,2}$"},
        "additionalProperties": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    },
    "Footprint": {
        "type": "object",
        "required": ["job_id", "agent", "status", "basis", "ra_deg", "dec_deg", "radius_deg"],
        "properties": {
            "job_id": {"type": "string"}, "agent": {"type": "string"}, "status": {"type": "string"},
            "dataset_id": {"type": ["string", "null"]}, "created_at": _TIME,
            "basis": {"type": "string", "enum": ["image", "dataset", "none"]},
            "ra_deg": _NUM, "dec_deg": _NUM, "radius_deg": _NUM, "image": {"type": ["string", "null"]},
        },
    },
    "Footprints": {"type": "object", "required": ["items", "total"],
                   "properties": {"items": {"type": "array", "items": _ref("Footprint")}, "total": {"type": "integer"}}},
    "Annotation": {
        "type": "object", "required": ["id", "job_id", "shape", "note", "created_at"],
        "properties": {"id": {"type": "string"}, "job_id": {"type": "string"},
                       "shape": ANNOTATION_BODY["properties"]["shape"], "note": {"type": "string"}, "created_at": _TIME},
    },
    "Annotations": {"type": "object", "required": ["items"],
                    "properties": {"items": {"type": "array", "items": _ref("Annotation")}}},
    "Snapshot": {
        "type": "object", "required": ["id", "name", "created_at", "png_url"],
        "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "created_at": _TIME,
                       "png_url": {"type": ["string", "null"]}, "view": VIEW_SCHEMA},
    },
    "Snapshots": {"type": "object", "required": ["items"],
                  "properties": {"items": {"type": "array", "items": _ref("Snapshot")}}},
    "AnnotationRequest": ANNOTATION_BODY,
    "SnapshotRequest": SNAPSHOT_BODY,
}

_FILTERS = [
    {"name": "agent", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "dataset_id", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "status", "in": "query", "required": False, "style": "form", "explode": False,
     "schema": {"type": "array", "items": {"type": "string"}}, "description": "Job statuses, comma-separated"},
    {"name": "from_date", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "to_date", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "order", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ORDER, "default": 10}, "description": "MOC order"},
]


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json("Error", {400: "Malformed request", 404: "Unknown (or another user's)", 409: "Name taken",
                                    413: "Too large", 422: "Invalid value", 503: "Science worker unavailable"}[c])
            for c in codes}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def sky_paths() -> dict[str, Any]:
    return {
        "/sky/settings": {"get": {"summary": "The sky map's background (the operator's HiPS survey, or null: blank)",
                                  "responses": {"200": {"description": "Settings", "content": {"application/json": {
                                      "schema": {"type": "object", "required": ["survey"],
                                                 "properties": {"survey": {"type": ["string", "null"]}}}}}}}}},
        "/sky/coverage": {"get": {"summary": "The caller's processed sky as an IVOA MOC (JSON)", "parameters": _FILTERS,
                                  "responses": {"200": _json("Moc", "MOC"), **_errors(400, 503)}}},
        "/sky/footprints": {"get": {"summary": "Each of the caller's jobs' pointing and field-of-view radius",
                                    "parameters": _FILTERS, "responses": {"200": _json("Footprints", "Footprints"),
                                                                          **_errors(400, 503)}}},
        "/sky/annotations": {
            "get": {"summary": "The caller's annotations (of one job: ?job_id=)",
                    "parameters": [{"name": "job_id", "in": "query", "required": False, "schema": {"type": "string"}}],
                    "responses": {"200": _json("Annotations", "Annotations")}},
            "post": {"summary": "Annotate a job's sky: a point, circle or polygon and a note",
                     "requestBody": _body("AnnotationRequest"),
                     "responses": {"201": _json("Annotation", "Stored"), **_errors(400, 404, 413, 422)}},
            "delete": {"summary": "Delete an annotation (?id=)",
                       "parameters": [{"name": "id", "in": "query", "required": True, "schema": {"type": "string"}}],
                       "responses": {"200": _json("Annotation", "Deleted"), **_errors(400, 404)}}},
        "/sky/annotations/{annotation_id}": {"delete": {
            "summary": "Delete an annotation", "parameters": [_id("annotation_id")],
            "responses": {"200": _json("Annotation", "Deleted"), **_errors(404)}}},
        "/sky/annotations/export": {"get": {
            "summary": "The annotations as a region file (DS9 or CRTF, by astropy-regions)",
            "parameters": [{"name": "format", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": list(REGION_FORMATS), "default": "ds9"}},
                           {"name": "job_id", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "Region file", "content": {"text/plain": {}}}, **_errors(400, 503)}}},
        "/sky/snapshots": {
            "get": {"summary": "The caller's saved sky views, newest first",
                    "responses": {"200": _json("Snapshots", "Snapshots")}},
            "post": {"summary": "Save the current view (centre, FoV, layers, annotations) with a PNG",
                     "requestBody": _body("SnapshotRequest"),
                     "responses": {"201": _json("Snapshot", "Saved"),
                                   "200": _json("Snapshot", "Saved over the view of the same name"),
                                   **_errors(400, 413, 422)}}},
        "/sky/snapshots/{snapshot_id}": {"get": {"summary": "One saved view", "parameters": [_id("snapshot_id")],
                                                 "responses": {"200": _json("Snapshot", "Snapshot"), **_errors(404)}}},
        "/sky/snapshots/{snapshot_id}/png": {"get": {
            "summary": "A saved view's picture", "parameters": [_id("snapshot_id")],
            "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}, **_errors(404)}}},
    }
