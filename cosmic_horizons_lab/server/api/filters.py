"""Filters on a user's job history that several endpoints share (search, metrics)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cosmic_horizons_lab.protocol.clock import parse_iso
from cosmic_horizons_lab.server.errors import BadRequest
from cosmic_horizons_lab.server.store.orm import JobRecord


def created_between(query: dict[str, str]) -> tuple[list[Any], dict[str, datetime | None]]:
    """Conditions for ``from_date``/``to_date`` (ISO-8601, inclusive) and the parsed bounds."""
    conds: list[Any] = []
    bounds: dict[str, datetime | None] = {"from_date": None, "to_date": None}
    for name in ("from_date", "to_date"):
        if query.get(name):
            try:
                when = parse_iso(query[name])
            except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 shifted out of range to UTC
                raise BadRequest(f"'{name}' must be an ISO-8601 date or date-time (years 1 to 9999 in UTC)",
                                 field=name) from None
            conds.append(JobRecord.created_at >= when if name == "from_date" else JobRecord.created_at <= when)
            bounds[name] = when
    return conds, bounds
