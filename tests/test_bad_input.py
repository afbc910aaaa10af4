"""The inputs issue 12 found answering 500 (Schemathesis and a hand-written list), each sent to a
real server on SQLite and on PostgreSQL: every one is refused with a 4xx in the API's one error
shape, ``{"error", "message", "field"}``, naming the field at fault, and nothing is written.

The bounds come from the served OpenAPI document, not from this file: a value "beyond the
bound" is the document's ``maximum`` plus one, and beyond 64 bits besides (``2**63``), so the
test follows the document if a bound moves.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import check_against_openapi

INT64_PAST = 2**63  # one past the largest 64-bit integer: SQLite's OverflowError, asyncpg's DataError
SCRIPT = "bad_input_job.py"
SUBMISSION = {"agent": "Script", "params": {"path": SCRIPT}}
SHAPE = {"error", "message", "field"}


def _with(params: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """The valid submission with ``params`` merged into its parameters and ``fields`` set."""
    return {**SUBMISSION, "params": {**SUBMISSION["params"], **(params or {})}, **fields}


def _bodies() -> list[tuple[str, str, bytes, set[int], str | None]]:
    """(name, operation path, raw body, statuses allowed, field named) for every bad body."""
    raw = lambda doc: json.dumps(doc).encode()
    cases = [
        ("parallelLimit beyond int64", "jobs/submit-batch", raw({"jobs": [SUBMISSION], "parallelLimit": INT64_PAST}),
         {422}, "parallelLimit"),
        ("parallelLimit of a pipeline beyond int64", "pipelines",
         raw({"stages": [{**SUBMISSION, "name": "a"}], "parallelLimit": INT64_PAST}), {422}, "parallelLimit"),
        ("max_runtime beyond int64 seconds", "jobs/submit", raw(_with({"max_runtime": f"{INT64_PAST}h"})),
         {422}, "params.max_runtime"),
        ("max_runtime beyond a float", "jobs/submit", raw(_with({"max_runtime": "9" * 400 + "h"})),
         {422}, "params.max_runtime"),
        ("max_runtime in Arabic-Indic digits", "jobs/submit", raw(_with({"max_runtime": "\u0661h"})),
         {422}, "params.max_runtime"),
        ("max_runtime with a non-breaking space", "jobs/submit", raw(_with({"max_runtime": "10\u00a0h"})),
         {422}, "params.max_runtime"),
        ("a NUL byte in a Script path", "jobs/submit", raw(_with({"path": "bad\u0000input.py"})),
         {400, 422}, "params.path"),
        # json.dumps would escape the surrogate as \ud800 too; written out so the wire form is plain
        ("a lone surrogate in a Script path", "jobs/submit",
         b'{"agent": "Script", "params": {"path": "bad\\ud800input.py"}}', {400, 422}, "params.path"),
        ("a 300-character name in a Script path", "jobs/submit", raw(_with({"path": "d/" + "x" * 297 + ".py"})),
         {400, 422}, "params.path"),
        ("a priority of 4,301 digits", "jobs/submit",
         b'{"agent": "Script", "params": {"path": "' + SCRIPT.encode() + b'"}, "priority": ' + b"7" * 4301 + b"}",
         {400, 422}, "priority"),
        ("a priority of 4,301 digits in a batch", "jobs/submit-batch",
         b'{"jobs": [{"agent": "Script", "params": {"path": "' + SCRIPT.encode() + b'"}, "priority": '
         + b"7" * 4301 + b"}]}", {400, 422}, "jobs[0].priority"),
        ("a body of 100,000 [", "jobs/submit", b"[" * 100_000, {400}, None),
        ("a body of 100,000 { in a pipeline", "pipelines", b'{"stages": ' + b'{"a": ' * 100_000, {400}, None),
        ("NaN", "jobs/submit", b'{"agent": "Script", "params": {"path": "x.py", "retries": NaN}}', {400}, None),
    ]
    # jobs/optimize must refuse what jobs/submit refuses: the same bodies, the same answer
    cases += [(f"{name} (optimize)", "jobs/optimize", body, codes, field)
              for name, op, body, codes, field in list(cases) if op == "jobs/submit"]
    return cases


def _queries(doc: dict[str, Any], job_id: str) -> list[tuple[str, str, set[int], str | None]]:
    """(name, path with its query, statuses allowed, field named) for every bad query or path."""
    def past(template: str, name: str) -> int:
        params = doc["paths"][template]["get"]["parameters"]
        (spec,) = [p["schema"] for p in params if p["name"] == name]
        return spec["maximum"] + 1

    out = []
    for template, path, name in [("/jobs/history/list", "jobs/history/list", "page"),
                                 ("/jobs/search", "jobs/search", "page"),
                                 ("/jobs/{job_id}/events", f"jobs/{job_id}/events", "after"),
                                 ("/jobs/{job_id}/logs", f"jobs/{job_id}/logs", "offset")]:
        out.append((f"{name} past the document's maximum", f"{path}?{name}={past(template, name)}", {400}, name))
        out.append((f"{name} beyond int64", f"{path}?{name}={INT64_PAST}", {400}, name))
        out.append((f"{name} in Arabic-Indic digits", f"{path}?{name}=%D9%A1", {400}, name))
    out += [
        ("after beyond int64 on the WebSocket route", f"events?after={INT64_PAST}", {400}, "after"),
        ("a query argument that is not UTF-8", "jobs/history/list?agent=%FF", {400}, "agent"),
        ("a NUL byte in a query argument", "jobs/search?dataset_id=a%00b", {400}, "dataset_id"),
        ("a job id that is not UTF-8 (Tornado's own 400)", "jobs/%FF%FE/status", {400}, "job_id"),
        ("a NUL byte in a job id", "jobs/ab%00cd", {400}, "job_id"),
        ("a 300-character job id", "jobs/" + "j" * 300 + "/status", {400}, "job_id"),
        ("a NUL byte in an output name", f"jobs/{job_id}/outputs/a%00b.fits", {400}, "path"),
        ("an encoded lone surrogate in an output name", f"jobs/{job_id}/outputs/a%ED%A0%80b.fits", {400}, "path"),
        ("a 300-character output name", f"jobs/{job_id}/outputs/" + "o" * 300, {400}, "path"),
        ("a date before year 1 in UTC", "jobs/search?from_date=0001-01-01T00:00:00%2B05:00", {400}, "from_date"),
    ]
    return out


async def _send(client, base: str, headers: dict[str, str], method: str, path: str,
                body: bytes | None = None) -> tuple[int, Any, str]:
    resp = await client.fetch(f"{base}cosmic-horizons/api/{path}", method=method, body=body, headers=headers,
                              raise_error=False, request_timeout=60)
    kind = resp.headers.get("Content-Type", "")
    data = json.loads(resp.body) if resp.body and kind.startswith("application/json") else resp.body[:200]
    return resp.code, data, kind


def _shape_problem(code: int, data: Any, kind: str, codes: set[int], field: str | None) -> str | None:
    if code not in codes:
        return f"answered {code}, not {sorted(codes)}: {data!r}"
    if not kind.startswith("application/json") or not isinstance(data, dict) or set(data) != SHAPE:
        return f"answered {code} outside the error shape ({kind}): {data!r}"
    if data["field"] != field:
        return f"answered {code} naming field {data['field']!r}, not {field!r}: {data['message']}"
    return None


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_every_bad_input_the_issue_lists_is_refused_naming_its_field(
    api, lab, script, http_server_client, jp_base_url, jp_auth_header
):
    lab.orchestrator._backend_retry_at = float("inf")  # hold dispatch: the one job stays as it is
    script("print('never run')\n", SCRIPT)
    code, job, _ = await api.post("jobs/submit", SUBMISSION)
    assert code == 201, job
    code, doc, _ = await api.get("openapi.json")
    assert code == 200
    headers = {**jp_auth_header, "Content-Type": "application/json"}
    code, before, _ = await api.get("events/latest")
    assert code == 200

    failures = []
    for name, op, body, codes, field in _bodies():
        code, data, kind = await _send(http_server_client, jp_base_url, headers, "POST", op, body)
        why = _shape_problem(code, data, kind, codes, field)
        if why is None:
            check_against_openapi("POST", "/" + op, code, data)
        failures += [f"{name}: POST {op} {why}"] if why else []
    for name, path, codes, field in _queries(doc, job["id"]):
        code, data, kind = await _send(http_server_client, jp_base_url, headers, "GET", path)
        why = _shape_problem(code, data, kind, codes, field)
        if why is None and not path.startswith("events"):
            check_against_openapi("GET", "/" + path.partition("?")[0], code, data)
        failures += [f"{name}: GET {path[:80]} {why}"] if why else []
    assert not failures, f"{len(failures)} bad inputs not refused as they should be:\n" + "\n".join(failures)

    code, page, _ = await api.get("jobs/history/list")
    assert code == 200 and [j["id"] for j in page["items"]] == [job["id"]], "a refused request wrote a job"
    code, after, _ = await api.get("events/latest")
    assert code == 200 and after == before, "a refused request wrote an event"


async def test_optimize_refuses_exactly_what_submit_refuses(api, lab, script):
    """The same durations to both: the same status and field, whichever way the answer goes."""
    lab.orchestrator._backend_retry_at = float("inf")
    script("print('never run')\n", SCRIPT)
    durations = ["48h", "04:00:00", "1-00:00:00", " 90m ", "1.5h", "366d", "367d", "0s", "\u0661h", "10\u00a0h",
                 "99999999999h", "1e400h", "48 hours", "4:00", "", 48]
    for text in durations:
        body = _with({"max_runtime": text})
        submit_code, submitted, _ = await api.post("jobs/submit", body)
        tips_code, tips, _ = await api.post("jobs/optimize", body)
        assert (submit_code < 300) == (tips_code < 300), (text, submitted, tips)
        if submit_code >= 400:
            assert submitted["field"] == tips["field"] == "params.max_runtime", (text, submitted, tips)


async def test_the_websocket_route_answers_json_to_a_plain_get(http_server_client, jp_base_url, jp_auth_header, lab):
    code, data, kind = await _send(http_server_client, jp_base_url, jp_auth_header, "GET", "events")
    assert _shape_problem(code, data, kind, {426}, None) is None, (code, kind, data)
    code, data, kind = await _send(http_server_client, jp_base_url, jp_auth_header, "GET", "events?after=x")
    assert _shape_problem(code, data, kind, {400}, "after") is None, (code, kind, data)
    check_against_openapi("GET", "/events", 426, {"error": "upgrade_required", "message": "", "field": None})
    # and without credentials: jupyter-server's 403, in the same shape
    code, data, kind = await _send(http_server_client, jp_base_url, {}, "GET", "events")
    assert _shape_problem(code, data, kind, {403}, None) is None, (code, kind, data)
