"""Saved sky views: centre, field of view, layers and annotations, with a PNG of what was on screen."""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.protocol.clock import isoformat, utcnow
from cosmic_horizons_lab.server.errors import NotFound
from cosmic_horizons_lab.server.sky.requests import snapshot_body
from cosmic_horizons_lab.server.store.database import Store
from cosmic_horizons_lab.server.store.orm import SkySnapshot


def snapshot_to_json(s: SkySnapshot, api_url: str, *, view: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"id": s.id, "name": s.name, "created_at": isoformat(s.created_at),
                           "png_url": f"{api_url}sky/snapshots/{s.id}/png" if s.png else None}
    if view:
        out["view"] = s.view
    return out


class Snapshots:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def save(self, user: str, body: Any) -> tuple[SkySnapshot, bool]:
        """Save a view under its name; a name used before is replaced (the same id). (row, created)."""
        name, view, png = snapshot_body(body)
        async with self.store.write() as tx:
            row = await tx.session.scalar(sa.select(SkySnapshot).where(SkySnapshot.user == user,
                                                                      SkySnapshot.name == name))
            created = row is None
            if row is None:
                row = SkySnapshot(id=secrets.token_hex(8), user=user, name=name)
                tx.session.add(row)
            row.view, row.png, row.created_at = view, png, utcnow()
        return row, created

    async def list(self, user: str) -> list[SkySnapshot]:
        async with self.store.read() as session:
            return list((await session.scalars(sa.select(SkySnapshot).where(SkySnapshot.user == user)
                                               .order_by(SkySnapshot.created_at.desc()))).all())

    async def get(self, user: str, snapshot_id: str) -> SkySnapshot:
        async with self.store.read() as session:
            row = await session.get(SkySnapshot, snapshot_id)
        if row is None or row.user != user:
            raise NotFound(f"no snapshot {snapshot_id!r}", field="id")
        return row
