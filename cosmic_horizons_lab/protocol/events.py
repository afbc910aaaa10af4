"""The event envelope: what one event looks like to anyone outside the server, and where it goes.

One home for the shape every committed event has (the REST replay, the WebSocket and the event
bus all carry it), for the NATS subject an event is published to, and for the headers the bus
sets. The OpenAPI document's ``Event`` schema is derived from :data:`ENVELOPE_SCHEMA`; a bus
consumer can validate against it and read its version from ``$id`` (also sent in the
:data:`SCHEMA_HEADER` of every message), so a v2 can come next to v1 without breaking anyone.

Subjects: ``cosmic.events.<user>.<job id>``, or ``cosmic.events.<user>._`` for an event that
belongs to no job. A user name or job id may hold what NATS gives a meaning (``.`` separates
tokens, ``*`` and ``>`` are wildcards, whitespace ends a subject): :func:`subject_token` writes
those (and ``%`` itself, and anything outside printable ASCII) as ``%XX`` of their UTF-8 bytes,
so the mapping is one-to-one and a consumer can read the user back with
:func:`unquote_token`.
"""

from __future__ import annotations

import re
from typing import Any

ENVELOPE_VERSION = 1
ENVELOPE_ID = f"urn:cosmic-horizons-lab:schemas:event-envelope/v{ENVELOPE_VERSION}"

#: Event types are dotted lower-case names: ``job.completed``, ``staging.progress``.
TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"

ENVELOPE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": ENVELOPE_ID,
    "title": "Cosmic Horizons event",
    "description": "One committed event. Ids increase in commit order; one job's events are in id order.",
    "type": "object",
    "required": ["id", "type", "job_id", "user", "ts", "correlation_id", "payload"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "integer", "minimum": 1, "description": "Unique per store, increasing in commit order."},
        "type": {"type": "string", "pattern": TYPE_PATTERN, "maxLength": 64,
                 "examples": ["job.submitted", "job.progress", "job.completed"]},
        "job_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 32},
        "user": {"type": "string", "minLength": 1, "maxLength": 255},
        "ts": {"type": "string", "format": "date-time", "pattern": r"(\+00:00|Z)$",
               "description": "The commit time, UTC."},
        "correlation_id": {"type": ["string", "null"], "maxLength": 128},
        "payload": {"type": "object"},
    },
}

SUBJECT_PREFIX = "cosmic.events"
DEADLETTER_PREFIX = "cosmic.deadletter"
#: The job token of an event that belongs to no job.
NO_JOB = "_"

#: JetStream deduplicates on it: the event's id (see :func:`message_id`).
MSG_ID_HEADER = "Nats-Msg-Id"
#: The envelope's ``$id``, so a consumer knows which schema the body follows.
SCHEMA_HEADER = "Cosmic-Event-Schema"
#: The event's type, so a consumer can filter without parsing the body.
TYPE_HEADER = "Cosmic-Event-Type"
#: On a dead letter: why the event was not published.
REASON_HEADER = "Cosmic-Deadletter-Reason"

_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - set(".*>%")
_UNSAFE = re.compile(r"[^\x21-\x7e]|[.*>%]")


def subject_token(value: str) -> str:
    """``value`` as one NATS subject token: no ``.``, ``*``, ``>`` or whitespace, reversibly."""
    if not value:
        return "%"  # an empty token is not allowed; '%' alone cannot come from a non-empty value
    if not _UNSAFE.search(value):
        return value  # the common case, and the hot path of the bridge
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in value)


def unquote_token(token: str) -> str:
    """The value :func:`subject_token` wrote as ``token``."""
    if token == "%":
        return ""
    out, i = bytearray(), 0
    while i < len(token):
        if token[i] == "%":
            out += bytes.fromhex(token[i + 1:i + 3])
            i += 3
        else:
            out += token[i].encode()
            i += 1
    return out.decode()


def _tail(event: dict[str, Any]) -> str:
    job = event.get("job_id")
    return f"{subject_token(str(event.get('user') or ''))}.{subject_token(job) if job else NO_JOB}"


def event_subject(event: dict[str, Any]) -> str:
    """``cosmic.events.<user>.<job id or _>``: one subject per job, so a consumer keeps per-job order."""
    return f"{SUBJECT_PREFIX}.{_tail(event)}"


def deadletter_subject(event: dict[str, Any]) -> str:
    """``cosmic.deadletter.<user>.<job id or _>``: where an event the stream refused goes."""
    return f"{DEADLETTER_PREFIX}.{_tail(event)}"


def message_id(event: dict[str, Any], prefix: str = "") -> str:
    """The ``Nats-Msg-Id`` of an event: its id (after ``prefix``, for servers with stores of their own)."""
    return f"{prefix}{event['id']}"
