"""The usage routes' part of the OpenAPI document: their paths (queries from ``analytics/requests.py``)
and the schemas of what they answer (``analytics/queries.py`` builds those answers)."""

from __future__ import annotations

from typing import Any

from cosmic_horizons_lab.server.analytics.requests import (
    ACCOUNT_QUERY,
    AGENTS_QUERY,
    LEADERBOARD_QUERY,
)
from cosmic_horizons_lab.server.api import requests

_TIME = {"type": "string", "format": "date-time", "pattern": r"(\+00:00|Z)$"}
_NTIME = {"anyOf": [_TIME, {"type": "null"}]}
_NUM = {"type": ["number", "null"]}
_COUNT = {"type": "integer", "minimum": 0}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_STAMP = {"period": {"type": "string"}, "from_date": _NTIME, "to_date": _NTIME, "exported_at": _NTIME}
_SUMMARY_FIELDS = {
    "jobs": _COUNT, "completed": _COUNT, "failed": _COUNT, "cancelled": _COUNT,
    "success_rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "gpu_hours": {"type": "number"}, "su": {"type": "number"}, "cost_usd": {"type": "number"},
}
_DISTRIBUTION = {"type": "object", "required": ["p50", "p90", "max", "count"],
                 "properties": {"p50": _NUM, "p90": _NUM, "max": _NUM, "count": _COUNT}}
_AGENT_FIGURES = {
    "jobs": _COUNT, "completed": _COUNT, "failed": _COUNT,
    "failure_rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "runtime_seconds": _ref("UsageDistribution"), "queue_wait_seconds": _ref("UsageDistribution"),
}
_UTIL = {"gpu_utilization": _NUM, "gpu_utilization_samples": _COUNT}

USAGE_SCHEMAS: dict[str, Any] = {
    "UsageSummary": {"type": "object", "required": list(_SUMMARY_FIELDS), "properties": {**_SUMMARY_FIELDS, **_UTIL}},
    "UsageDistribution": _DISTRIBUTION,
    "UsageAccount": {
        "type": "object", "required": ["user", "period", "totals", "by_period", "by_agent"],
        "properties": {
            "user": {"type": "string"}, **_STAMP, "totals": _ref("UsageSummary"),
            "by_period": {"type": "array", "items": {"allOf": [_ref("UsageSummary"), {
                "type": "object", "required": ["period"], "properties": {"period": {"type": "string"}}}]}},
            "by_agent": {"type": "array", "items": {"allOf": [_ref("UsageSummary"), {
                "type": "object", "required": ["agent"], "properties": {"agent": {"type": "string"}}}]}},
        },
    },
    "UsageLeaderboard": {
        "type": "object", "required": ["period", "by", "limit", "items"],
        "properties": {**_STAMP, "by": {"enum": list(LEADERBOARD_QUERY["by"]["enum"])}, "limit": {"type": "integer"},
                       "items": {"type": "array", "items": {
                           "type": "object", "required": ["rank", "user", "jobs", "gpu_hours", "su", "cost_usd"],
                           "properties": {"rank": {"type": "integer", "minimum": 1}, "user": {"type": "string"},
                                          "jobs": _COUNT, "gpu_hours": {"type": "number"}, "su": {"type": "number"},
                                          "cost_usd": {"type": "number"}}}}},
    },
    "UsageAgents": {
        "type": "object", "required": ["period", "user", "operator", "scope", "agents"],
        "properties": {**_STAMP, "user": {"type": "string", "description": "the caller, as the server names them"},
                       "operator": {"type": "boolean"}, "scope": {"enum": ["own", "all"]},
                       "agents": {"type": "array", "items": {
            "type": "object", "required": ["agent", *_AGENT_FIGURES, "by_period"],
            "properties": {"agent": {"type": "string"}, **_AGENT_FIGURES, "by_period": {"type": "array", "items": {
                "type": "object", "required": ["period", *_AGENT_FIGURES],
                "properties": {"period": {"type": "string"}, **_AGENT_FIGURES}}}}}}},
    },
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "A bad query parameter (named in field)", 403: "Another user's account, or the leaderboard, "
            "asked by someone who is not an operator"}
    return {str(c): _json("Error", text[c]) for c in codes}


def _query(spec: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name, schema in spec.items():
        schema = dict(schema)
        param = {"name": name, "in": "query", "required": False}
        if "description" in schema:
            param["description"] = schema.pop("description")
        out.append({**param, "schema": schema})
    return out


def usage_paths() -> dict[str, Any]:
    user = {"name": "user", "in": "path", "required": True, "schema": dict(requests.RESOURCE_ID),
            "description": "the account (a user name as the identity provider names it)"}
    return {
        "/usage/accounts/{user}": {"get": {
            "summary": "An account's jobs, GPU-hours, SUs, cost and success rate: in total, by period, by agent",
            "parameters": [user, *_query(ACCOUNT_QUERY)],
            "responses": {"200": _json("UsageAccount", "The account"), **_errors(400, 403)}}},
        "/usage/leaderboard": {"get": {
            "summary": "Top users by GPU-hours or SUs over a period (operators, unless configured public)",
            "parameters": _query(LEADERBOARD_QUERY),
            "responses": {"200": _json("UsageLeaderboard", "The ranking"), **_errors(400, 403)}}},
        "/usage/agents": {"get": {
            "summary": "Each agent's runtime distribution per period, queue wait and failure rate",
            "parameters": _query(AGENTS_QUERY),
            "responses": {"200": _json("UsageAgents", "The agents"), **_errors(400)}}},
    }
