"""The base of every REST handler: authentication, the owner of a request, JSON in and out,
and the one mapping of domain errors to ``{"error", "message", "field"}``."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.identity import (
    IdentityProvider,
    LegacyIdentityProvider,
    PasswordIdentityProvider,
)
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from cosmic_horizons_lab.server.api.submission import parse_json_body
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


class APIBase(ExtensionHandlerMixin, APIHandler):
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
        if self.correlation_id:
            self.set_header("X-Correlation-ID", self.correlation_id)
        await ensure_async(super().prepare())
        await self.app.ensure_started()

    def json_body(self) -> Any:
        if len(self.request.body) > self.app.max_body_bytes:
            raise PayloadTooLarge(
                f"the request body is {len(self.request.body)} bytes; the limit is {self.app.max_body_bytes}",
                field=None,
            )
        return parse_json_body(self.request.body)

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(data, default=str))

    def query(self) -> dict[str, str]:
        return {k: self.get_query_argument(k) for k in self.request.query_arguments}

    def int_arg(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"'{name}' must be an integer", field=name) from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f" from {minimum} to {maximum}" if maximum is not None else f" ≥ {minimum}"
            raise BadRequest(f"'{name}' must be an integer{bound}", field=name)
        return value

    def log_exception(self, typ, value, tb) -> None:  # type: ignore[override]
        if isinstance(value, LabError):
            self.log.info("%s %s → %s %s", self.request.method, self.request.path, value.status, value.message)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, LabError):
            status_code = exc.status
            body = exc.to_json()
        elif isinstance(exc, web.HTTPError):
            body = {"error": _http_code(status_code), "message": exc.log_message or self._reason, "field": None}
        else:
            body = {"error": "internal_error", "message": "internal server error (see the server log)", "field": None}
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))


def _http_code(status: int) -> str:
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
        status, f"http_{status}"
    )
