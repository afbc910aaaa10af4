"""Handlers for datasets in motion and under inspection: staging, validation, layout advice,
transfer estimates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jupyter_server.auth.decorator import authorized
from tornado import web

if TYPE_CHECKING:
    pass


from cosmic_horizons_lab.server.handlers.base import APIBase


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
