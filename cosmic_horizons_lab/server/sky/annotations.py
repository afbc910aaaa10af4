"""A user's annotations on the sky, each kept with the job it is about, and their region files."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.protocol.clock import isoformat, utcnow
from cosmic_horizons_lab.server.errors import BadRequest, NotFound
from cosmic_horizons_lab.server.sky.requests import REGION_FORMATS, annotation_body
from cosmic_horizons_lab.server.store.database import Store
from cosmic_horizons_lab.server.store.orm import SkyAnnotation

#: ``get_job(user, job_id)``: the job, or NotFound when it is unknown or not the user's.
GetJob = Callable[[str, str], Awaitable[Any]]


def annotation_to_json(a: SkyAnnotation) -> dict[str, Any]:
    return {"id": a.id, "job_id": a.job_id, "shape": a.shape, "note": a.note, "created_at": isoformat(a.created_at)}


class Annotations:
    def __init__(self, store: Store, get_job: GetJob, regions: Callable[[dict[str, Any]], Any]) -> None:
        self.store = store
        self.get_job = get_job
        self.regions = regions

    async def add(self, user: str, body: Any) -> dict[str, Any]:
        job_id, shape, note = annotation_body(body)
        await self.get_job(user, job_id)  # 404 for a job that is not the user's
        row = SkyAnnotation(id=secrets.token_hex(8), user=user, job_id=job_id, shape=shape, note=note,
                            created_at=utcnow())
        async with self.store.write() as tx:
            tx.session.add(row)
        return annotation_to_json(row)

    async def list(self, user: str, job_id: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(SkyAnnotation).where(SkyAnnotation.user == user)
        if job_id:
            query = query.where(SkyAnnotation.job_id == job_id)
        async with self.store.read() as session:
            rows = (await session.scalars(query.order_by(SkyAnnotation.created_at, SkyAnnotation.id))).all()
        return [annotation_to_json(a) for a in rows]

    async def delete(self, user: str, annotation_id: str) -> dict[str, Any]:
        async with self.store.write() as tx:
            row = await tx.session.get(SkyAnnotation, annotation_id)
            if row is None or row.user != user:
                raise NotFound(f"no annotation {annotation_id!r}", field="id")
            await tx.session.delete(row)
        return annotation_to_json(row)

    async def export(self, user: str, job_id: str | None, fmt: str) -> str:
        """The annotations (of one job, or all) as a DS9 or CRTF region file, written by astropy-regions."""
        if fmt not in REGION_FORMATS:
            raise BadRequest(f"'format' must be one of {', '.join(REGION_FORMATS)}", field="format")
        annotations = await self.list(user, job_id)
        answer = await asyncio.to_thread(self.regions, {"annotations": annotations, "format": fmt})
        return str(answer["text"])
