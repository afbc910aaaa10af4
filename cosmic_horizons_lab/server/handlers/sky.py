"""Handlers of the sky: coverage (a MOC) and footprints, annotations and their region files,
snapshots and their pictures. Thin: parse, call :mod:`cosmic_horizons_lab.server.sky`, answer."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from cosmic_horizons_lab.server.errors import BadRequest
from cosmic_horizons_lab.server.handlers.base import APIBase
from cosmic_horizons_lab.server.sky import Sky
from cosmic_horizons_lab.server.sky.snapshots import snapshot_to_json


class SkyBase(APIBase):
    @property
    def sky(self) -> Sky:
        return self.app.sky

    async def _send_raw(self, data: bytes) -> None:
        # Flushed before finish: APIHandler.finish would otherwise label any body as JSON.
        self.write(data)
        await self.flush()
        self.finish()


class SkySettingsHandler(SkyBase):
    """``GET sky/settings``: what every sky map of this server draws behind our layers (the operator's HiPS)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"survey": self.app.sky_survey or None})


class CoverageHandler(SkyBase):
    """``GET sky/coverage?agent=&status=&from_date=&to_date=&order=``: the IVOA MOC (JSON) of the caller's sky."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.sky.coverage.moc(self.owner, self.query()))


class FootprintsHandler(SkyBase):
    """``GET sky/footprints`` (same filters): each job's pointing and radius, what a click on the map opens."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        items = await self.sky.coverage.footprints(self.owner, self.query())
        self.reply({"items": items, "total": len(items)})


class AnnotationsHandler(SkyBase):
    """``GET sky/annotations?job_id=`` · ``POST`` one (201) · ``DELETE sky/annotations?id=``."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        job_id = self.get_query_argument("job_id", None)
        self.reply({"items": await self.sky.annotations.list(self.owner, job_id)})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.reply(await self.sky.annotations.add(self.owner, self.json_body()), 201)

    @web.authenticated
    @authorized
    async def delete(self, annotation_id: str | None = None) -> None:
        annotation_id = annotation_id or self.get_query_argument("id", None)
        if not annotation_id:
            raise BadRequest("which annotation: 'id' is required", field="id")
        self.reply(await self.sky.annotations.delete(self.owner, annotation_id))


class AnnotationsExportHandler(SkyBase):
    """``GET sky/annotations/export?format=ds9|crtf&job_id=``: a region file (astropy-regions)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        fmt = self.get_query_argument("format", "ds9")
        text = await self.sky.annotations.export(self.owner, self.get_query_argument("job_id", None), fmt)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Content-Disposition", f'attachment; filename="annotations.{"reg" if fmt == "ds9" else "crtf"}"')
        await self._send_raw(text.encode())


class SnapshotsHandler(SkyBase):
    """``GET sky/snapshots``: the caller's saved views, newest first · ``POST``: save one (201; 200 when
    it replaced the view saved under the same name)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        rows = await self.sky.snapshots.list(self.owner)
        self.reply({"items": [snapshot_to_json(s, self.api_url, view=False) for s in rows]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        row, created = await self.sky.snapshots.save(self.owner, self.json_body())
        self.reply(snapshot_to_json(row, self.api_url), 201 if created else 200)


class SnapshotHandler(SkyBase):
    """``GET sky/snapshots/{id}``: one saved view, to reopen."""

    @web.authenticated
    @authorized
    async def get(self, snapshot_id: str) -> None:
        self.reply(snapshot_to_json(await self.sky.snapshots.get(self.owner, snapshot_id), self.api_url))


class SnapshotPngHandler(SkyBase):
    """``GET sky/snapshots/{id}/png``: the picture saved with a view."""

    @web.authenticated
    @authorized
    async def get(self, snapshot_id: str) -> None:
        row = await self.sky.snapshots.get(self.owner, snapshot_id)
        if not row.png:
            raise web.HTTPError(404, "this snapshot has no picture")
        self.set_header("Content-Type", "image/png")
        await self._send_raw(row.png)
