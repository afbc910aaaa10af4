"""REST and WebSocket handlers: thin. Parse, call the orchestrator, map errors.

Every handler is authenticated and authorised through jupyter-server's auth
(``@web.authenticated``/``@authorized``, resource ``cosmic-horizons``), and
every failure leaves as ``{"error", "message", "field"}`` with the status of
its domain error, mapped once in :meth:`APIBase.write_error`.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import re
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.auth.identity import IdentityProvider, LegacyIdentityProvider, PasswordIdentityProvider
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web, websocket

from cosmic_horizons_lab.protocol import jobdir
from cosmic_horizons_lab.server.errors import BadRequest, LabError, NotFound, PayloadTooLarge
from cosmic_horizons_lab.server.events import encode, message
from cosmic_horizons_lab.executor.registry import agents
from cosmic_horizons_lab.server.api.responses import job_to_json, status_to_json
from cosmic_horizons_lab.server.api.submission import parse_json_body

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


class SubmitHandler(APIBase):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        key = self.request.headers.get("Idempotency-Key")
        job, created = await self.orchestrator.submit(
            self.owner, self.json_body(), idempotency_key=key, correlation_id=self.correlation_id
        )
        if not self.correlation_id:
            self.set_header("X-Correlation-ID", job.correlation_id)
        self.reply(job_to_json(job, self.api_url), 201 if created else 200)


class SubmitBatchHandler(APIBase):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        batch, jobs = await self.orchestrator.submit_batch(
            self.owner, self.json_body(), correlation_id=self.correlation_id
        )
        self.reply(
            {"batch_id": batch.id, "parallelLimit": batch.parallel_limit, "jobs": [job_to_json(j, self.api_url) for j in jobs]},
            201,
        )


class PipelineHandler(APIBase):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        batch, jobs = await self.orchestrator.submit_pipeline(
            self.owner, self.json_body(), correlation_id=self.correlation_id
        )
        self.reply(
            {
                "pipeline_id": batch.id,
                "batch_id": batch.id,
                "stages": {name: job.id for name, job in jobs.items()},
                "jobs": [job_to_json(j, self.api_url) for j in jobs.values()],
            },
            201,
        )


class JobHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        self.reply(job_to_json(job, self.api_url))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        job = await self.orchestrator.cancel(self.owner, job_id)
        self.reply(job_to_json(job, self.api_url))


class JobStatusHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        self.reply(status_to_json(job, self.api_url))


class JobEventsHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        after = self.int_arg("after", 0)
        limit = self.int_arg("limit", 1000, 1, 10_000)
        events = await self.app.store.events_after(self.owner, after, job_id=job.id, limit=limit)
        self.reply({"job_id": job.id, "events": events})


class JobLogsHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        offset = self.int_arg("offset", 0)
        limit = self.int_arg("limit", 65536, 1, 4 * 1024 * 1024)
        path = jobdir.job_dir(self.app.work_path, job.user, job.id)
        chunk = await asyncio.to_thread(jobdir.read_log, path, offset, limit)
        self.reply({"job_id": job.id, "status": job.status, **chunk})


class JobOutputsHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        path = jobdir.job_dir(self.app.work_path, job.user, job.id)
        files = await asyncio.to_thread(self.app.outputs.list, path)
        out_dir = (path / "outputs").resolve()
        under_root = out_dir.is_relative_to(self.app.root_path)
        for f in files:
            f["url"] = f"{self.api_url}jobs/{job.id}/outputs/{f['path']}"
            # Where Lab's file browser finds it (null when work_dir lies outside the server root).
            f["root_path"] = (out_dir / f["path"]).relative_to(self.app.root_path).as_posix() if under_root else None
        self.reply({"job_id": job.id, "status": job.status, "directory": str(path / "outputs"), "files": files})


class JobOutputFileHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str, relative: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        path = jobdir.output_file(jobdir.job_dir(self.app.work_path, job.user, job.id), relative)
        if path is None:
            raise NotFound(f"job {job_id} has no output {relative!r}", field="path")
        self.set_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self.set_header("Content-Disposition", f'attachment; filename="{path.name}"')
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                self.write(chunk)
                await self.flush()
        self.finish()


class JobListHandler(APIBase):
    """History (``jobs/history/list``) and search (``jobs/search``): one query, two paths."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        page = await self.orchestrator.list_jobs(self.owner, self.query())
        self.reply(
            {
                "items": [job_to_json(j, self.api_url) for j in page.items],
                "total": page.total,
                "page": page.page,
                "page_size": page.page_size,
            }
        )


class ResourcesHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        pools = await self.app.execution_backend.resources()
        self.reply({"backend": self.app.execution_backend.name, "pools": [p.__dict__ for p in pools]})


class AgentsHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(
            {
                "agents": [
                    {
                        "name": name,
                        "description": cls.description,
                        "requires_dataset": cls.requires_dataset,
                        "params_schema": cls.schema(),
                    }
                    for name, cls in sorted(agents().items())
                ]
            }
        )


class DatasetsHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        registry = self.app.datasets

        def described() -> list[dict[str, Any]]:
            found = registry.list()
            return [d.to_json(shape) for d, shape in zip(found, registry.describe_many(found))]

        self.reply({"datasets": await asyncio.to_thread(described)})


class GpusHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(self.app.telemetry.inventory())


class GpuHistoryHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        seconds = self.int_arg("seconds", 300, 1, 86400)
        self.reply(self.app.telemetry.history(seconds))


class LatestEventHandler(APIBase):
    """The caller's newest event id: where a client that wants only new events starts."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"last_event_id": await self.app.store.last_event_id(self.owner)})


class HealthHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.app.health())


class OpenAPIHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        from cosmic_horizons_lab.server.api.openapi import openapi_document

        self.reply(openapi_document(self.api_url))


class EventStreamHandler(ExtensionHandlerMixin, JupyterHandler, websocket.WebSocketHandler):
    """``WS events?after=<id>``: the caller's events, replayed from ``after`` then live.

    It subscribes before replaying, then drops live events it already
    replayed, so a reconnecting client misses nothing and gets nothing twice.
    Messages carry one event, or a list of events when several are pending.
    """

    auth_resource = AUTH_RESOURCE

    def initialize(self, name: str = EXTENSION, *args: Any, **kwargs: Any) -> None:
        super().initialize(name, *args, **kwargs)

    @property
    def owner(self) -> str:
        return request_owner(self)

    async def pre_get(self) -> None:
        await self.extensionapp.ensure_started()
        user = self.current_user
        allowed = await ensure_async(self.authorizer.is_authorized(self, user, "read", AUTH_RESOURCE))
        if not allowed:
            raise web.HTTPError(403)
        raw = self.get_query_argument("after", "0")
        try:
            self.after = int(raw)
            if self.after < 0:
                raise ValueError
        except ValueError:
            raise web.HTTPError(400, "'after' must be an integer ≥ 0") from None

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        res = super().get(*args, **kwargs)
        if res is not None:
            await res

    def check_origin(self, origin: str) -> bool:
        return JupyterHandler.check_origin(self, origin)

    def open(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        app = self.extensionapp
        self.subscription = app.bus.subscribe(self.owner)
        self.sender = asyncio.get_running_loop().create_task(self._send(app))

    async def _send(self, app: "CosmicHorizons") -> None:
        last = self.after
        try:
            while True:  # replay what the store has after `last`, page by page
                page = await app.store.events_after(self.owner, last, limit=2000)
                if not page:
                    break
                await self.write_message(message([encode(ev) for ev in page]))
                last = page[-1]["id"]
            while True:
                batch = await self.subscription.next_batch()
                if self.subscription.overflowed:
                    self.close(1013, "too far behind; reconnect with after=<last id>")
                    return
                fresh = [item for item in batch if item[0] > last]
                if fresh:
                    await self.write_message(message(fresh))
                    last = fresh[-1][0]
        except (websocket.WebSocketClosedError, asyncio.CancelledError):
            pass

    def on_message(self, message: str | bytes) -> None:
        pass  # the stream is one-way; nothing a client sends means anything

    def on_close(self) -> None:
        if getattr(self, "subscription", None) is not None:
            self.subscription.close()
        if getattr(self, "sender", None) is not None:
            self.sender.cancel()


# -- issue 5: staging, validation, tips, metrics, webhooks -------------------------------------
class StageHandler(APIBase):
    """``POST jobs/dataset/stage``: queue a transfer (202), or the one already in flight / fresh (200)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        doc, created = await self.app.staging.stage(self.owner, self.json_body())
        self.reply(doc, 202 if created else 200)


class StagingHandler(APIBase):
    """``GET``: the newest staging of a dataset (``?target_resource=``); ``DELETE``: cancel it."""

    @web.authenticated
    @authorized
    async def get(self, dataset_id: str) -> None:
        self.reply(await self.app.staging.status(self.owner, dataset_id, self.get_query_argument("target_resource", None)))

    @web.authenticated
    @authorized
    async def delete(self, dataset_id: str) -> None:
        self.reply(await self.app.staging.cancel(self.owner, dataset_id, self.get_query_argument("target_resource", None)))


class DatasetValidateHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, dataset_id: str) -> None:
        self.reply(await self.app.inspector.validate(dataset_id))


class DatasetLayoutHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, dataset_id: str) -> None:
        self.reply(await self.app.inspector.layout(dataset_id))


class TransferEstimateHandler(APIBase):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.reply(await self.app.staging.estimate(self.owner, self.json_body()))


class OptimizeHandler(APIBase):
    """``POST jobs/optimize``: tips for a submission before it is sent (nothing is queued)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.reply(await self.app.advisor.tips(self.owner, self.json_body()))


class MetricsHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        budget = await self.app.accounting.balance(self.owner)
        self.reply(await self.app.usage.metrics(self.owner, self.query(), budget))


class JobWebhooksHandler(APIBase):
    """``GET jobs/{id}/webhooks``: the job's delivery log."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        self.reply({"job_id": job.id, "webhook_url": job.webhook_url,
                    "deliveries": await self.app.webhooks.deliveries(job.id)})


class WebhookSecretHandler(APIBase):
    """``GET``: the caller's signing secret (made on first use); ``POST``: replace it."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.app.webhooks.secret(self.owner))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.reply(await self.app.webhooks.secret(self.owner, rotate=True))


JOB = r"(?P<job_id>[^/]+)"
DATASET = r"(?P<dataset_id>[^/]+)"


def routes() -> list[tuple[str, type]]:
    """URL patterns relative to ``{base_url}`` + :data:`~cosmic_horizons_lab.protocol.api.API_PREFIX`."""
    return [
        (r"jobs/submit", SubmitHandler),
        (r"jobs/submit-batch", SubmitBatchHandler),
        (r"pipelines", PipelineHandler),
        (r"jobs/history/list", JobListHandler),
        (r"jobs/search", JobListHandler),
        (r"jobs/resources/available", ResourcesHandler),
        (r"jobs/dataset/stage", StageHandler),
        (r"jobs/dataset/estimate-transfer", TransferEstimateHandler),
        (rf"jobs/dataset/{DATASET}/staging-status", StagingHandler),
        (rf"jobs/dataset/{DATASET}/validate", DatasetValidateHandler),
        (rf"jobs/dataset/{DATASET}/optimize", DatasetLayoutHandler),
        (r"jobs/optimize", OptimizeHandler),
        (r"jobs/metrics", MetricsHandler),
        (rf"jobs/{JOB}/webhooks", JobWebhooksHandler),
        (r"webhooks/secret", WebhookSecretHandler),
        (rf"jobs/{JOB}/status", JobStatusHandler),
        (rf"jobs/{JOB}/events", JobEventsHandler),
        (rf"jobs/{JOB}/logs", JobLogsHandler),
        (rf"jobs/{JOB}/outputs", JobOutputsHandler),
        (rf"jobs/{JOB}/outputs/(?P<relative>.+)", JobOutputFileHandler),
        (rf"jobs/{JOB}", JobHandler),
        (r"agents", AgentsHandler),
        (r"datasets", DatasetsHandler),
        (r"gpus", GpusHandler),
        (r"gpus/history", GpuHistoryHandler),
        (r"health", HealthHandler),
        (r"openapi.json", OpenAPIHandler),
        (r"events/latest", LatestEventHandler),
        (r"events", EventStreamHandler),
    ]
