"""Handlers for what the server offers: agents, datasets, GPUs and resources, health, and the
OpenAPI document."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from cosmic_horizons_lab.executor.registry import agents
from cosmic_horizons_lab.server.api.requests import GPU_HISTORY_QUERY

if TYPE_CHECKING:
    pass


from cosmic_horizons_lab.server.handlers.base import APIBase


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
        # The nodes jobs sampled themselves on in the last few minutes, beside this host's GPUs.
        self.reply(self.app.telemetry.inventory(await self.app.job_samples.latest_by_node(self.owner, 300.0)))


class GpuHistoryHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        seconds = self.int_arg("seconds", GPU_HISTORY_QUERY)
        self.reply(self.app.telemetry.history(seconds))


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

        self.reply(openapi_document(self.api_url, self.app.execution_backend.name))
