"""The base of every REST handler: authentication, the owner of a request, JSON in and out,
and the one mapping of domain errors to ``{"error", "message", "field"}``."""

from __future__ import annotations

import functools
import inspect
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from jupyter_core.utils import ensure_async
from jupyter_server.auth.identity import (
    IdentityProvider,
    LegacyIdentityProvider,
    PasswordIdentityProvider,
)
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from tornado import web

from cosmic_horizons_lab.server.api import requests
from cosmic_horizons_lab.server.api.body import parse_json_body
from cosmic_horizons_lab.server.errors import BadRequest, LabError, PayloadTooLarge

if TYPE_CHECKING:
    from cosmic_horizons_lab.server.app import CosmicHorizons



AUTH_RESOURCE = "cosmic-horizons"
EXTENSION = "cosmic_horizons_lab"
# Providers with which a token-only request is an anonymous stand-in for the
# one person who owns the server: every such request belongs to that owner.
SINGLE_OWNER_PROVIDERS = (IdentityProvider, PasswordIdentityProvider, LegacyIdentityProvider)
_CORRELATION = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_owner(handler: Any) -> str:
    """Who owns what this request touches, as the identity provider names them (REST and WebSocket alike)."""
    if type(handler.identity_provider) in SINGLE_OWNER_PROVIDERS:
        return handler.extensionapp.owner
    return handler.current_user.username


class JSONErrors:
    """Every error of a handler of ours as ``{"error", "message", "field"}``: the domain errors,
    Tornado's own (a 405, an argument that is not UTF-8) and the unexpected, mixed into the REST
    base and the WebSocket handler alike."""

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """A path or query argument as text; refused naming it (Tornado's own 400 names nothing)
        when it is not UTF-8 or holds what no store or file system takes (a NUL byte)."""
        field = _documented(name)
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"'{field or 'the path'}' is not valid UTF-8", field=field) from None
        problem = requests.text_problem(text)
        if problem:
            raise BadRequest(f"'{field or 'the path'}' {problem}", field=field)
        return text

    def log_exception(self, typ, value, tb) -> None:  # type: ignore[no-untyped-def]
        if isinstance(value, LabError):
            self.log.info("%s %s → %s %s", self.request.method, self.request.path, value.status, value.message)
            return
        super().log_exception(typ, value, tb)  # type: ignore[misc]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, LabError):
            status_code = exc.status
            body = exc.to_json()
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
            body = {"error": _http_code(status_code), "message": message or self._reason, "field": None}
        else:
            body = {"error": "internal_error", "message": "internal server error (see the server log)", "field": None}
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))


def _documented(name: str | None) -> str | None:
    """The name the API document gives a handler's argument (``relative`` is the ``path``)."""
    return requests.PATH_PARAMS.get(name, (name, None))[0] if name else None


class APIBase(JSONErrors, ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    def initialize(self, name: str = EXTENSION, *args: Any, **kwargs: Any) -> None:
        super().initialize(name, *args, **kwargs)

    @property
    def app(self) -> "CosmicHorizons":
        return self.extensionapp

    @property
    def orchestrator(self):
        return self.app.orchestrator

    @property
    def owner(self) -> str:
        return request_owner(self)

    @property
    def api_url(self) -> str:
        return self.app.api_url

    async def prepare(self) -> None:  # type: ignore[override]
        cid = self.request.headers.get("X-Correlation-ID")
        self.correlation_id = cid if cid and _CORRELATION.match(cid) else None
        self._start_span()
        if self.correlation_id:
            self.set_header("X-Correlation-ID", self.correlation_id)
        await ensure_async(super().prepare())
        if not _takes(type(self), self.request.method or "", frozenset(self.path_kwargs)):
            # a route shared by several methods (``sky/annotations/{id}``) whose handler does not
            # answer this one with an id: 405, not the TypeError of calling it
            raise web.HTTPError(405)
        for name, value in self.path_kwargs.items():
            requests.path_param(name, value)
        await self.app.ensure_started()

    def _start_span(self) -> None:
        """The request's span (a child of its ``traceparent``), current for the rest of the request.

        Not detached at the end: Tornado runs each request in a task of its own, whose context
        ends with it.
        """
        attributes = {"http.request.method": self.request.method or "", "url.path": self.request.path}
        if self.correlation_id:
            attributes["cosmic.correlation_id"] = self.correlation_id
        if "job_id" in self.path_kwargs:
            attributes["cosmic.job_id"] = self.path_kwargs["job_id"]
        route = _route(self.request.path, self.path_kwargs)
        attributes["http.route"] = route
        self._span = self.app.tracing.start_request_span(self.request.method or "", route, self.request.headers, attributes)
        otel_context.attach(trace.set_span_in_context(self._span))

    def on_finish(self) -> None:
        span = getattr(self, "_span", None)
        if span is not None:
            status = self.get_status()
            span.set_attribute("http.response.status_code", status)
            cid = self._headers.get("X-Correlation-ID")
            if cid:
                span.set_attribute("cosmic.correlation_id", cid)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        super().on_finish()

    def json_body(self) -> Any:
        if len(self.request.body) > self.app.max_body_bytes:
            raise PayloadTooLarge(
                f"the request body is {len(self.request.body)} bytes; the limit is {self.app.max_body_bytes}",
                field=None,
            )
        return parse_json_body(self.request.body)

    def reply(self, data: Any, status: int = 200) -> None:
        if isinstance(data, dict) and isinstance(data.get("id"), str) and "agent" in data and hasattr(self, "_span"):
            self._span.set_attribute("cosmic.job_id", data["id"])  # a job: the one submitted or read
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(data, default=str))

    def query(self) -> dict[str, str]:
        return {k: self.get_query_argument(k) for k in self.request.query_arguments}

    def int_arg(self, name: str, spec: dict[str, dict[str, Any]]) -> int:
        """The integer query parameter ``name`` by the query schema ``spec`` holding it (400 naming it)."""
        return requests.query_int(self.query(), name, spec[name])


@functools.cache
def _takes(cls: type, method: str, arguments: frozenset[str]) -> bool:
    """Whether ``cls``'s handler of ``method`` accepts the route's named ``arguments``."""
    handler = getattr(cls, method.lower(), None)
    if handler is None:
        return True  # Tornado answers 405 itself
    try:
        inspect.signature(handler).bind(None, **{name: "" for name in arguments})
    except TypeError:
        return False
    return True


def _route(path: str, arguments: dict[str, str]) -> str:
    """The route a request took, its arguments named (``…/jobs/{job_id}``): the span's name
    groups requests by route, not by id."""
    names = {value: name for name, value in arguments.items()}
    return "/".join(f"{{{names[unquote(seg)]}}}" if unquote(seg) in names else seg for seg in path.split("/"))


def _http_code(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            405: "method_not_allowed"}.get(
        status, f"http_{status}"
    )
