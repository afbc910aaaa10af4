"""What the job endpoints accept around a submission: the batch and pipeline bodies, the
history query, the events, logs and GPU-history queries and the Idempotency-Key header; and the
one check for unknown body fields.

Each shape is written as data (JSON-Schema-like constants) and the parsers read their bounds
from it, so a document generated from these constants says what the server really enforces.
The parsers keep the API's error rule (``submission.py``): 400 when the request is malformed
(not an object, an unknown field, a query value that is not a number), 422 when a known field
has a value we cannot accept.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cosmic_horizons_lab.protocol.states import Status
from cosmic_horizons_lab.server.api.filters import created_between
from cosmic_horizons_lab.server.errors import BadRequest, ValidationFailed

MAX_BATCH = 1000
MAX_PAGE_SIZE = 200
#: The largest id, offset or count a request may name: 2**53 - 1, the largest integer every JSON
#: client (JavaScript's numbers among them) reads exactly, and well inside the 64-bit integers
#: of SQLite and PostgreSQL, so no bound check is ever left to the database.
MAX_SAFE_INTEGER = 2**53 - 1
#: The furthest byte of a log a request may ask for: 1 TiB, beyond any job's log, and below what
#: every file system seeks to (ext4 refuses offsets past 16 TiB with EINVAL).
MAX_LOG_OFFSET = 2**40
#: The most pages a listing has: MAX_PAGE_SIZE jobs a page, two hundred million jobs in all.
MAX_PAGE = 1_000_000
#: A name (a job, dataset or stage id; one component of a path): what every file system takes.
MAX_NAME = 255
#: A relative path (a Script's path, an output file's name): what Linux's PATH_MAX leaves.
MAX_PATH = 1024

#: Where the OpenAPI document keeps the submission schemas (``submission.py`` builds them).
SUBMISSION_REF = "#/components/schemas/Submission"
PIPELINE_STAGE_REF = "#/components/schemas/PipelineStage"

#: ``Idempotency-Key`` header of a single submission.
IDEMPOTENCY_KEY: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "description": "The same key from the same user returns the job it first made (200) instead of a new one",
}

#: ``parallelLimit`` of a batch or pipeline: how many of its jobs may run at once; null or absent, no
#: limit. A batch holds at most MAX_BATCH jobs, so a larger limit would mean nothing.
PARALLEL_LIMIT: dict[str, Any] = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": MAX_BATCH,
    "description": "How many of its jobs may run at once; null or absent: no limit",
}

#: ``name`` of a pipeline stage: what its children's ``depends_on`` refer to, unique in the pipeline.
STAGE_NAME: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME,
    "description": "What the other stages' depends_on call this one; unique within the pipeline (400 if not)",
}

#: A job's or a dataset's id in a path (``jobs/{job_id}``, ``jobs/dataset/{dataset_id}/…``).
RESOURCE_ID: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}

#: An output file's path under the job's ``outputs/`` (``jobs/{job_id}/outputs/{path}``).
OUTPUT_PATH: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_PATH,
    "description": f"relative to the job's outputs/; each component at most {MAX_NAME} characters",
}

#: Path parameters of the routes (the handlers' keyword names) -> (the document's name, schema).
PATH_PARAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "job_id": ("job_id", RESOURCE_ID),
    "dataset_id": ("dataset_id", RESOURCE_ID),
    "relative": ("path", OUTPUT_PATH),
}

#: POST jobs/submit-batch. Each item is a submission (``submission.py`` checks it).
BATCH_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["jobs"],
    "additionalProperties": False,
    "properties": {
        "jobs": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": {"$ref": SUBMISSION_REF}},
        "parallelLimit": PARALLEL_LIMIT,
    },
}

#: POST pipelines. Each stage is a submission plus the ``name`` (:data:`STAGE_NAME`) its
#: children's ``depends_on`` refer to; a cycle or an unknown parent is refused with 400.
PIPELINE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["stages"],
    "additionalProperties": False,
    "properties": {
        "stages": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": {"$ref": PIPELINE_STAGE_REF}},
        "parallelLimit": PARALLEL_LIMIT,
    },
}

#: Paging of a listing. A value that is not an integer or out of bounds is a 400.
PAGE_QUERY: dict[str, dict[str, Any]] = {
    "page": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
    "page_size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": 20},
}

_DATE = {"type": "string", "examples": ["2025-01-31", "2025-01-31T12:00:00Z"]}

#: GET jobs/history/list and jobs/search: the user's jobs, newest first. Empty values are ignored.
JOB_QUERY: dict[str, dict[str, Any]] = {
    "agent": {"type": "string", "description": "only this agent's jobs"},
    "dataset_id": {"type": "string", "description": "only jobs reading this dataset"},
    "batch_id": {"type": "string", "description": "only this batch's or pipeline's jobs"},
    "status": {
        "type": "array",
        "items": {"type": "string", "enum": [s.value for s in Status]},
        "description": "only jobs in one of these statuses: comma-separated, any case",
    },
    "from_date": {**_DATE, "description": "created at or after (ISO-8601 date or date-time; UTC without offset)"},
    "to_date": {**_DATE, "description": "created at or before (ISO-8601 date or date-time; UTC without offset)"},
    **PAGE_QUERY,
}

#: GET jobs/{id}/events: the job's events after the ``after`` id, oldest first.
EVENTS_QUERY: dict[str, dict[str, Any]] = {
    "after": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER, "default": 0,
              "description": "events with a greater id"},
    "limit": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 1000},
}

#: GET jobs/{id}/resources: the job's resource samples with an id above ``after``.
RESOURCES_QUERY: dict[str, dict[str, Any]] = {
    "after": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER, "default": 0,
              "description": "samples with a greater id (the previous answer's next_after)"},
    "limit": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 2000},
}

#: GET jobs/{id}/logs: a slice of the job's log, ``limit`` bytes from ``offset``.
LOGS_QUERY: dict[str, dict[str, Any]] = {
    "offset": {"type": "integer", "minimum": 0, "maximum": MAX_LOG_OFFSET, "default": 0,
               "description": "byte offset to read from"},
    "limit": {"type": "integer", "minimum": 1, "maximum": 4 * 1024 * 1024, "default": 65536,
              "description": "most bytes to read"},
}

#: GET gpus/history: the telemetry of the last ``seconds``.
GPU_HISTORY_QUERY: dict[str, dict[str, Any]] = {
    "seconds": {"type": "integer", "minimum": 1, "maximum": 86_400, "default": 300},
}

#: WS events: the caller's events after ``after``, then live ones.
STREAM_QUERY: dict[str, dict[str, Any]] = {"after": EVENTS_QUERY["after"]}

#: The JOB_QUERY parameters that select on a job column of the same name by equality.
JOB_QUERY_EQUALS = ("agent", "dataset_id", "batch_id")


def reject_unknown(
    body: dict[str, Any], known: Sequence[str], *, also: Collection[str] = (), prefix: str = ""
) -> None:
    """400 naming the first unknown key (in sorted order) and listing ``known`` as given.

    ``also`` are keys a caller accepts without advertising them (a pipeline stage's ``name``
    in a submission); ``prefix`` places the field in a larger body (``jobs[3].``).
    """
    unknown = sorted(set(body) - set(known) - set(also))
    if unknown:
        raise BadRequest(
            f"unknown field {unknown[0]!r}; known fields: {', '.join(known)}", field=prefix + unknown[0]
        )


def idempotency_key(value: str | None) -> str | None:
    """The header's value, refused when it is outside :data:`IDEMPOTENCY_KEY`'s length bounds."""
    shortest, longest = IDEMPOTENCY_KEY["minLength"], IDEMPOTENCY_KEY["maxLength"]
    if value is not None and not (shortest <= len(value) <= longest):
        raise BadRequest(f"Idempotency-Key must be {shortest} to {longest} characters", field="Idempotency-Key")
    return value


def batch_body(body: Any) -> tuple[list[Any], int | None]:
    """The submissions and ``parallelLimit`` of a :data:`BATCH_BODY`."""
    return _envelope(body, BATCH_BODY)


def pipeline_body(body: Any) -> tuple[list[Any], int | None, list[str]]:
    """The stages, ``parallelLimit`` and stage names (in order) of a :data:`PIPELINE_BODY`.

    Names are checked before the stages themselves: a child's ``depends_on`` means nothing
    until every stage has its one name.
    """
    stages, limit = _envelope(body, PIPELINE_BODY)
    names: list[str] = []
    for i, stage in enumerate(stages):
        name = stage.get("name") if isinstance(stage, dict) else None
        if not isinstance(name, str) or not STAGE_NAME["minLength"] <= len(name) <= STAGE_NAME["maxLength"]:
            raise ValidationFailed(
                f"every stage needs a 'name' (1 to {STAGE_NAME['maxLength']} characters) its children refer to",
                field=f"stages[{i}].name",
            )
        if name in names:
            raise BadRequest(f"stage name {name!r} is used twice", field=f"stages[{i}].name")
        names.append(name)
    return stages, limit, names


def _envelope(body: Any, schema: dict[str, Any]) -> tuple[list[Any], int | None]:
    (key,) = schema["required"]
    if not isinstance(body, dict):
        raise BadRequest(f"send a JSON object with '{key}'", field=None)
    reject_unknown(body, list(schema["properties"]))
    items = body.get(key)
    if not isinstance(items, list) or len(items) < schema["properties"][key]["minItems"]:
        raise ValidationFailed(f"'{key}' must be a non-empty list of submissions", field=key)
    most = schema["properties"][key]["maxItems"]
    if len(items) > most:
        raise ValidationFailed(f"at most {most} {key} at once", field=key)
    limit = body.get("parallelLimit")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int)
        or not PARALLEL_LIMIT["minimum"] <= limit <= PARALLEL_LIMIT["maximum"]
    ):
        raise ValidationFailed(
            f"'parallelLimit' must be an integer from {PARALLEL_LIMIT['minimum']} to {PARALLEL_LIMIT['maximum']}",
            field="parallelLimit",
        )
    return items, limit


@dataclass
class JobQuery:
    """A parsed :data:`JOB_QUERY`."""

    page: int
    page_size: int
    #: column name -> the value it must equal (only the parameters that were given)
    equals: dict[str, str] = field(default_factory=dict)
    #: upper-case statuses, or None for any status
    statuses: list[str] | None = None
    #: the ``from_date``/``to_date`` conditions, from the filter the metrics endpoint shares
    created: list[Any] = field(default_factory=list)


def job_query(query: dict[str, str]) -> JobQuery:
    """Parse a listing's query string; refuses the first bad parameter (paging, then status, then dates)."""
    page, page_size = page_args(query)
    equals = {name: query[name] for name in JOB_QUERY_EQUALS if query.get(name)}
    statuses = None
    if query.get("status"):
        allowed = JOB_QUERY["status"]["items"]["enum"]
        statuses = [s.strip().upper() for s in query["status"].split(",") if s.strip()]
        bad = [s for s in statuses if s not in allowed]
        if bad:
            raise BadRequest(f"unknown status {bad[0]!r}; one of {', '.join(allowed)}", field="status")
    return JobQuery(page, page_size, equals, statuses, created_between(query)[0])


def page_args(query: Mapping[str, str]) -> tuple[int, int]:
    """``page`` and ``page_size`` by :data:`PAGE_QUERY`: every value is read before any bound is checked."""
    for name, spec in PAGE_QUERY.items():
        if name in query and not _ASCII_INTEGER.fullmatch(query[name]):
            raise BadRequest(_integer_rule(name, spec), field=name)
    return query_int(query, "page", PAGE_QUERY["page"]), query_int(query, "page_size", PAGE_QUERY["page_size"])


_ASCII_INTEGER = re.compile(r"-?[0-9]{1,20}", re.ASCII)


def query_int(query: Mapping[str, str], name: str, spec: dict[str, Any]) -> int:
    """The integer query parameter ``name`` by its schema ``spec`` (its default when absent): 400
    naming it unless it is written in ASCII digits and lies within the schema's bounds.

    ``int()`` alone would take ``"١٢"``, ``" 5"`` and ``"1_000"``, and any number of digits:
    the value must be refused here, before a database or the file system sees it.
    """
    raw = query.get(name)
    if raw is None:
        return spec["default"]
    if not _ASCII_INTEGER.fullmatch(raw):
        raise BadRequest(_integer_rule(name, spec), field=name)
    value = int(raw)
    if value < spec["minimum"] or value > spec.get("maximum", MAX_SAFE_INTEGER):
        raise BadRequest(_integer_rule(name, spec), field=name)
    return value


def path_param(name: str, value: str) -> None:
    """400 naming the path parameter when ``value`` breaks its :data:`PATH_PARAMS` schema (a NUL
    byte, a name longer than any file system takes)."""
    documented, spec = PATH_PARAMS.get(name, (name, RESOURCE_ID))
    problem = path_problem(value, spec["maxLength"]) if spec is OUTPUT_PATH else _text_problem(value, spec["maxLength"])
    if problem:
        raise BadRequest(f"'{documented}' {problem}", field=documented)


def path_problem(value: str, longest: int = MAX_PATH) -> str | None:
    """Why ``value`` cannot be a relative path we hand to the file system, or None.

    The file system refuses a NUL byte (``ValueError``), a component longer than
    :data:`MAX_NAME` (``ENAMETOOLONG``) and a character UTF-8 cannot encode (a lone surrogate):
    each would surface as a 500 where it is first used.
    """
    problem = _text_problem(value, longest)
    if problem:
        return problem
    if any(len(part) > MAX_NAME for part in value.split("/")):
        return f"has a component longer than {MAX_NAME} characters"
    return None


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (a NUL byte, a lone surrogate), or None."""
    if "\x00" in value:
        return "contains a NUL byte"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a character UTF-8 cannot encode (a lone surrogate)"
    return None


def _text_problem(value: str, longest: int) -> str | None:
    if len(value) > longest:
        return f"is longer than {longest} characters"
    return text_problem(value)


def _integer_rule(name: str, spec: dict[str, Any]) -> str:
    return f"'{name}' must be an integer from {spec['minimum']} to {spec.get('maximum', MAX_SAFE_INTEGER)}"
