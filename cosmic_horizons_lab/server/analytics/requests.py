"""What the usage endpoints' queries may say: JSON Schema constants the parser reads its bounds from,
and that the OpenAPI document lists (``analytics/openapi.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cosmic_horizons_lab.protocol.clock import utcnow
from cosmic_horizons_lab.server.api import requests
from cosmic_horizons_lab.server.api.filters import created_between
from cosmic_horizons_lab.server.errors import BadRequest

PERIODS = ("day", "week", "month")
RANKINGS = ("gpu_hours", "su")
#: The leaderboard's trailing window per period, when no from_date/to_date narrows it.
WINDOWS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30)}
MAX_LIMIT = 1000

_PERIOD = {"type": "string", "enum": list(PERIODS), "default": "day"}
_DATES = {"from_date": requests.JOB_QUERY["from_date"], "to_date": requests.JOB_QUERY["to_date"]}

#: GET usage/accounts/{user}
ACCOUNT_QUERY: dict[str, dict[str, Any]] = {
    "period": {**_PERIOD, "description": "bucket of by_period (a week starts on Monday)"}, **_DATES,
}
#: GET usage/leaderboard
LEADERBOARD_QUERY: dict[str, dict[str, Any]] = {
    "period": {**_PERIOD, "description": "the trailing window ranked (1, 7 or 30 days to now) unless from_date/to_date "
               "are given"},
    "by": {"type": "string", "enum": list(RANKINGS), "default": "gpu_hours", "description": "what ranks the users"},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 10},
    **_DATES,
}
#: GET usage/agents
AGENTS_QUERY: dict[str, dict[str, Any]] = {
    "period": {**_PERIOD, "default": "week", "description": "bucket of each agent's by_period"}, **_DATES,
}


@dataclass(frozen=True)
class UsageQuery:
    period: str
    start: datetime | None
    end: datetime | None
    by: str = "gpu_hours"
    limit: int = 10


def _choice(query: dict[str, str], name: str, spec: dict[str, Any]) -> str:
    value = query.get(name) or spec["default"]
    if value not in spec["enum"]:
        raise BadRequest(f"'{name}' must be one of {', '.join(spec['enum'])}", field=name)
    return value


def parse(query: dict[str, str], spec: dict[str, dict[str, Any]]) -> UsageQuery:
    """The query by ``spec`` (one of the constants above): 400 naming the first bad field. Other
    parameters are ignored, as everywhere in the API (``token`` authenticates a request)."""
    period = _choice(query, "period", spec["period"])
    by = _choice(query, "by", spec["by"]) if "by" in spec else "gpu_hours"
    limit = requests.query_int(query, "limit", spec["limit"]) if "limit" in spec else 10
    _, bounds = created_between(query)
    start, end = bounds["from_date"], bounds["to_date"]
    if start is not None and end is not None and start > end:
        raise BadRequest("'from_date' is after 'to_date'", field="from_date")
    if spec is LEADERBOARD_QUERY and start is None and end is None:
        start = utcnow() - WINDOWS[period]
    return UsageQuery(period, start, end, by, limit)
