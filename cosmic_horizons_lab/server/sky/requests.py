"""What a sky request may say: annotation and snapshot bodies as JSON Schema (for the OpenAPI
document) and their parsers, which refuse the first bad field by name (400 malformed, 422 out of range)."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from cosmic_horizons_lab.server.api.requests import reject_unknown, text_problem
from cosmic_horizons_lab.server.errors import BadRequest, PayloadTooLarge, ValidationFailed

MAX_NOTE = 4000
MAX_VERTICES = 1000
MAX_NAME = 255
#: A snapshot's picture: a PNG of a view a few thousand pixels across at most.
MAX_PNG_BYTES = 8 * 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Base64 of a PNG (its first bytes are the PNG signature, "iVBORw0KGgo" in base64).
PNG_PATTERN = r"^(data:image/png;base64,)?iVBORw0KGgo[A-Za-z0-9+/]*={0,2}$"
SHAPES = ("point", "circle", "polygon")
REGION_FORMATS = ("ds9", "crtf")

_RA = {"type": "number", "minimum": 0, "exclusiveMaximum": 360, "description": "Right ascension, degrees (ICRS)."}
_DEC = {"type": "number", "minimum": -90, "maximum": 90, "description": "Declination, degrees (ICRS)."}

SHAPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "enum": list(SHAPES)},
        "ra": _RA,
        "dec": _DEC,
        "radius": {"type": "number", "exclusiveMinimum": 0, "maximum": 180, "description": "Degrees (circle)."},
        "vertices": {"type": "array", "minItems": 3, "maxItems": MAX_VERTICES,
                     # [ra, dec] as a plain pair (the parser checks each range): prefixItems here
                     # is mis-bundled by OpenAPI tools (Schemathesis reads it as a list schema).
                     "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2,
                               "description": "[ra in [0, 360), dec in [-90, 90]], degrees (ICRS)."},
                     "description": "[[ra, dec], …] in degrees (polygon)."},
    },
}
ANNOTATION_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["job_id", "shape"],
    "additionalProperties": False,
    "properties": {
        "job_id": {"type": "string", "minLength": 1, "maxLength": 32},
        "shape": SHAPE_SCHEMA,
        "note": {"type": "string", "maxLength": MAX_NOTE, "default": ""},
    },
}
VIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ra", "dec", "fov"],
    "properties": {
        "ra": _RA, "dec": _DEC,
        "fov": {"type": "number", "exclusiveMinimum": 0, "maximum": 360, "description": "Degrees across."},
        "projection": {"type": "string", "maxLength": 16},
        "layers": {"type": "array", "items": {"type": "object"}},
        "annotations": {"type": "array", "items": {"type": "object"}},
        "job_ids": {"type": "array", "items": {"type": "string"}},
    },
}
SNAPSHOT_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["name", "view"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "view": VIEW_SCHEMA,
        "png": {"type": "string", "pattern": PNG_PATTERN,
                "description": "The view's picture: a PNG, base64 (or a data:image/png;base64 URL)."},
    },
}


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        if field == "body":
            raise BadRequest("the body must be a JSON object", field=None)
        raise BadRequest(f"'{field}' must be a JSON object", field=field)
    return value


def _number(value: Any, field: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{field}' must be a number", field=field)
    if value < lo or (lo_open and value == lo) or value > hi or (hi_open and value == hi):
        raise ValidationFailed(f"'{field}' must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}",
                               field=field)
    return float(value)


def _text(value: Any, field: str, longest: int, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string", field=field)
    problem = text_problem(value) or (f"is longer than {longest} characters" if len(value) > longest else None) \
        or ("is empty" if required and not value.strip() else None)
    if problem:
        raise (BadRequest if "NUL" in problem or "UTF-8" in problem else ValidationFailed)(
            f"'{field}' {problem}", field=field)
    return value


def _vertices(value: Any, field: str) -> list[list[float]]:
    if not isinstance(value, list):
        raise BadRequest(f"'{field}' must be a list of [ra, dec]", field=field)
    if not 3 <= len(value) <= MAX_VERTICES:
        raise ValidationFailed(f"a polygon needs 3 to {MAX_VERTICES} vertices", field=field)
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, list) or len(v) != 2:
            raise BadRequest(f"'{field}[{i}]' must be [ra, dec]", field=f"{field}[{i}]")
        out.append([_number(v[0], f"{field}[{i}][0]", 0, 360, hi_open=True),
                    _number(v[1], f"{field}[{i}][1]", -90, 90)])
    return out


def parse_shape(value: Any, field: str = "shape") -> dict[str, Any]:
    """The shape, every field present checked (the document states each field's rules
    whatever the type), then those the type needs required and the rest dropped."""
    shape = _object(value, field)
    reject_unknown(shape, list(SHAPE_SCHEMA["properties"]), prefix=f"{field}.")
    kind = shape.get("type")
    if kind not in SHAPES:
        raise ValidationFailed(f"'{field}.type' must be one of {', '.join(SHAPES)}", field=f"{field}.type")
    checked: dict[str, Any] = {}
    if "ra" in shape:
        checked["ra"] = _number(shape["ra"], f"{field}.ra", 0, 360, hi_open=True)
    if "dec" in shape:
        checked["dec"] = _number(shape["dec"], f"{field}.dec", -90, 90)
    if "radius" in shape:
        checked["radius"] = _number(shape["radius"], f"{field}.radius", 0, 180, lo_open=True)
    if "vertices" in shape:
        checked["vertices"] = _vertices(shape["vertices"], f"{field}.vertices")
    if kind == "polygon":
        if "vertices" not in checked:
            raise BadRequest(f"a polygon needs '{field}.vertices'", field=f"{field}.vertices")
        return {"type": kind, "vertices": checked["vertices"]}
    for name in ("ra", "dec"):
        if name not in checked:
            raise BadRequest(f"a {kind} needs '{field}.{name}'", field=f"{field}.{name}")
    out_shape: dict[str, Any] = {"type": kind, "ra": checked["ra"], "dec": checked["dec"]}
    if kind == "circle":
        if "radius" not in shape:
            raise BadRequest(f"a circle needs '{field}.radius'", field=f"{field}.radius")
        out_shape["radius"] = _number(shape["radius"], f"{field}.radius", 0, 180, lo_open=True)
    return out_shape


def annotation_body(body: Any) -> tuple[str, dict[str, Any], str]:
    """(job id, shape, note) of a ``POST sky/annotations`` body."""
    body = _object(body, "body")
    reject_unknown(body, list(ANNOTATION_BODY["properties"]))
    if "job_id" not in body:
        raise BadRequest("'job_id' is required: an annotation belongs to a job", field="job_id")
    if "shape" not in body:
        raise BadRequest("'shape' is required", field="shape")
    job_id = _text(body["job_id"], "job_id", 32, required=True)
    return job_id, parse_shape(body["shape"]), _text(body.get("note", ""), "note", MAX_NOTE)


def snapshot_body(body: Any) -> tuple[str, dict[str, Any], bytes | None]:
    """(name, view, PNG bytes or None) of a ``POST sky/snapshots`` body."""
    body = _object(body, "body")
    reject_unknown(body, list(SNAPSHOT_BODY["properties"]))
    if "name" not in body:
        raise BadRequest("'name' is required", field="name")
    name = _text(body["name"], "name", MAX_NAME, required=True)
    view = _object(body.get("view"), "view")
    for key in ("ra", "dec", "fov"):
        if key not in view:
            raise BadRequest(f"'view.{key}' is required", field=f"view.{key}")
    view = {**view, "ra": _number(view["ra"], "view.ra", 0, 360, hi_open=True),
            "dec": _number(view["dec"], "view.dec", -90, 90),
            "fov": _number(view["fov"], "view.fov", 0, 360, lo_open=True)}
    if "projection" in view:
        _text(view["projection"], "view.projection", 16)
    for key, kind, what in (("layers", dict, "an object"), ("annotations", dict, "an object"),
                            ("job_ids", str, "a string")):
        if key not in view:
            continue
        if not isinstance(view[key], list):
            raise BadRequest(f"'view.{key}' must be a list", field=f"view.{key}")
        for i, item in enumerate(view[key]):
            if not isinstance(item, kind):
                raise BadRequest(f"'view.{key}[{i}]' must be {what}", field=f"view.{key}[{i}]")
    png = None
    if body.get("png") is not None:
        raw = body["png"]
        if not isinstance(raw, str):
            raise BadRequest("'png' must be a base64 string", field="png")
        if raw.startswith("data:"):
            header, _, raw = raw.partition(",")
            if header != "data:image/png;base64":
                raise ValidationFailed("'png' must be a PNG (data:image/png;base64,…)", field="png")
        if len(raw) * 3 // 4 > MAX_PNG_BYTES:
            raise PayloadTooLarge(f"'png' is over {MAX_PNG_BYTES} bytes", field="png")
        try:
            png = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("'png' is not valid base64", field="png") from None
        if not png.startswith(PNG_MAGIC):
            raise ValidationFailed("'png' is not a PNG image", field="png")
    return name, view, png
