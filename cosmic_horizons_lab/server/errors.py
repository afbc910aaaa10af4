"""Domain errors: one class per way a request can fail, each with its HTTP status.

Handlers map these in one place (``handlers.APIBase.write_error``), so the
orchestrator and store raise meaning, not status codes, and every failure
reaches the client as ``{"error", "message", "field"}``.
"""

from __future__ import annotations

from typing import Any


class LabError(Exception):
    status = 500
    code = "internal_error"
    #: Headers the answer carries besides the body (``Upgrade`` with a 426).
    headers: dict[str, str] = {}

    def __init__(self, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "field": self.field, **self.extra}


class BadRequest(LabError):
    """The request is malformed: not JSON, unknown fields, wrong types, a cycle."""

    status = 400
    code = "bad_request"


class UpgradeRequired(LabError):
    """A plain request to a WebSocket route."""

    status = 426
    code = "upgrade_required"
    headers = {"Upgrade": "websocket", "Connection": "Upgrade"}


class ValidationFailed(LabError):
    """Well-formed, but a value is not acceptable (range, unknown agent or dataset)."""

    status = 422
    code = "validation_error"


class NotFound(LabError):
    status = 404
    code = "not_found"


class Conflict(LabError):
    """The job is in a state that does not allow this (cancel of a terminal job)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(LabError):
    status = 413
    code = "payload_too_large"


class Forbidden(LabError):
    status = 403
    code = "forbidden"


class QuotaExceeded(LabError):
    status = 429
    code = "quota_exceeded"


class IllegalTransition(LabError):
    """A lifecycle transition the state machine forbids (a bug or a race, never user input)."""

    status = 409
    code = "illegal_transition"


class BudgetExceeded(LabError):
    """The job's SU reservation does not fit what is left of the user's budget (body carries the figures)."""

    status = 402
    code = "budget_exceeded"
