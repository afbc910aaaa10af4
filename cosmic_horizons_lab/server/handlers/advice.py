"""Handlers for advice and accounting: submission tips, metrics and costs, webhooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jupyter_server.auth.decorator import authorized
from tornado import web

if TYPE_CHECKING:
    pass


from cosmic_horizons_lab.server.handlers.base import APIBase


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
