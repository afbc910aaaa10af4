"""Fixtures: a real server extension (pytest-jupyter), real SQLite and PostgreSQL stores,
and an ``api`` fetcher that checks every response against the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jupyter_server.auth.identity import IdentityProvider, User
from tornado.httpclient import HTTPResponse

from cosmic_horizons_lab.server.api.openapi import openapi_document

from .services import PostgresServer, kill_job_groups

pytest_plugins = ["pytest_jupyter.jupyter_server"]

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


class TwoUserIdentityProvider(IdentityProvider):
    """Test identity provider: a token-authenticated request names its user in ``X-Test-User``
    (``astro`` when it names none).

    It stands for a hub's provider, which names each user, so that isolation
    between users can be shown on one server.
    """

    async def get_user(self, handler):  # type: ignore[override]
        user = await super().get_user(handler)
        if user is None:
            return None
        name = handler.request.headers.get("X-Test-User") or "astro"
        return User(username=name, name=name)


# -- databases -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite"])
def db_url(request, tmp_path):
    """The store URL; tests parametrize it with ``indirect`` to run on PostgreSQL too."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").database()
    return f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"


# -- the server ------------------------------------------------------------------------
@pytest.fixture
def lab_config() -> dict[str, Any]:
    """Extra ``CosmicHorizons`` settings for one test (override or update it)."""
    return {}


@pytest.fixture
def work_dir(tmp_path) -> Path:
    return tmp_path / "root_dir" / "jobs"


@pytest.fixture
def datasets_dir(tmp_path) -> Path:
    path = tmp_path / "datasets"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def jp_server_config(db_url, work_dir, datasets_dir, lab_config):
    return {
        "ServerApp": {
            "jpserver_extensions": {"cosmic_horizons_lab": True},
            "identity_provider_class": TwoUserIdentityProvider,
        },
        "CosmicHorizons": {
            "db_url": db_url,
            "work_dir": str(work_dir),
            "datasets_dir": str(datasets_dir),
            "poll_interval": 0.1,
            "local_slots": 2,
            "owner": "astro",
            # Each server start would read the datasets' shapes in a worker process: off in the
            # API tests (a test turns it on); the UI tests' servers keep the default.
            "warm_datasets": False,
            **lab_config,
        },
        # The fork server's warm spare imports torch and the science after a server's first job:
        # tests/test_fork_server.py tests it; here it would only take CI's 2 cores from the tests.
        "LocalBackend": {"warm_spare": False},
    }


@pytest.fixture
def lab(jp_serverapp, jp_asyncio_loop, work_dir):
    """The running extension app (its orchestrator, store, bus), started."""
    app = next(iter(jp_serverapp.extension_manager.extension_apps["cosmic_horizons_lab"]))
    jp_asyncio_loop.run_until_complete(app.ensure_started())
    yield app
    kill_job_groups(work_dir)


# -- OpenAPI-checked requests ----------------------------------------------------------
_DOC = openapi_document()
_OPS: list[tuple[Any, str, dict[str, Any]]] = []
for _template, _item in _DOC["paths"].items():
    import re as _re

    _pattern = _re.compile("^" + _re.sub(r"\{[^}]+\}", "[^/]+", _template) + "$")
    if _template.endswith("{path}"):
        _pattern = _re.compile("^" + _re.sub(r"\{job_id\}", "[^/]+", _template).replace("{path}", ".+") + "$")
    _OPS.append((_pattern, _template, _item))
# Literal paths (jobs/search) win over templated ones (jobs/{job_id}).
_OPS.sort(key=lambda op: op[1].count("{"))


def check_against_openapi(method: str, path: str, status: int, body: Any) -> None:
    """Fail unless the response's status is documented for the operation and the body fits its schema."""
    for pattern, template, item in _OPS:
        if pattern.match(path) and method.lower() in item:
            op = item[method.lower()]
            break
    else:
        raise AssertionError(f"{method} {path} is not in the OpenAPI document")
    response = op["responses"].get(str(status))
    assert response is not None, f"{method} {template} answered {status}, which the OpenAPI document does not list"
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    if schema is None or body is None:
        return
    validator = Draft202012Validator({**schema, "components": _DOC["components"]})
    errors = sorted(validator.iter_errors(body), key=lambda e: e.path)
    assert not errors, f"{method} {template} {status}: {errors[0].message} at {list(errors[0].path)}"


class Api:
    """``await api.post("jobs/submit", {...})`` → (status, json, headers), checked against OpenAPI."""

    def __init__(self, fetch) -> None:
        self.fetch = fetch

    async def call(self, method: str, path: str, body: Any = None, *, user: str | None = None,
                   headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
                   raw_body: bytes | None = None) -> tuple[int, Any, Any]:
        hdrs = dict(headers or {})
        if user:
            hdrs["X-Test-User"] = user
        kwargs: dict[str, Any] = {"method": method, "headers": hdrs, "raise_error": False}
        if raw_body is not None:
            kwargs["body"] = raw_body
        elif body is not None:
            kwargs["body"] = json.dumps(body)
        elif method in ("POST", "PUT"):
            kwargs["body"] = b""
        if method == "DELETE":
            kwargs["allow_nonstandard_methods"] = True
        resp: HTTPResponse = await self.fetch("cosmic-horizons", "api", *path.split("/"), params=params, **kwargs)
        data = json.loads(resp.body) if resp.body and resp.headers.get("Content-Type", "").startswith("application/json") else None
        check_against_openapi(method, "/" + path, resp.code, data)
        return resp.code, data, resp.headers

    async def get(self, path: str, **kw: Any):
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any):
        return await self.call("POST", path, body, **kw)

    async def delete(self, path: str, **kw: Any):
        return await self.call("DELETE", path, **kw)

    async def wait_for(self, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 30.0, **kw: Any) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            code, job, _ = await self.get(f"jobs/{job_id}", **kw)
            assert code == 200, job
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")
            await asyncio.sleep(0.05)


@pytest.fixture
def api(jp_fetch, lab) -> Api:
    return Api(jp_fetch)


@pytest.fixture
def script(jp_root_dir):
    """Write a script under the server root; returns its relative path."""

    def make(code: str, name: str = "job.py") -> str:
        path = Path(jp_root_dir) / name
        path.write_text(code)
        return name

    return make
