"""The bridge's durable cursor: which committed events the bus has acknowledged.

The store is the outbox: events are committed there first, and a bridge reads them back in id
order from the position in table ``bus_cursors`` (one row per cursor name). The position moves
only over events the bus acknowledged (or that went to the dead-letter subject), and it is
saved lazily (at most every ``save_interval`` seconds): a crash between an ack and the save
publishes those few events again, and the stream's deduplication (``Nats-Msg-Id``) drops them.
So nothing is lost and nothing is delivered twice.

Positions only grow: two servers sharing one database and one stream may both bridge the same
events (the stream deduplicates them), and a save never moves the cursor back.

Gaps: on PostgreSQL, ids come from a sequence, so a transaction of another server can hold id
100 uncommitted while id 101 is already visible, and a rolled-back transaction leaves a hole for
good. A read stops before a gap in the ids and hands out what lies beyond it only once the gap
has stood for ``gap_grace`` seconds: late commits are waited for, holes are passed. (SQLite
hands out ids at commit, one writer at a time: no gaps there.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.protocol.clock import utcnow
from cosmic_horizons_lab.server.store.database import Store, event_to_json
from cosmic_horizons_lab.server.store.orm import BusCursor, Event


class Cursor:
    """The position of one bridge (``name``) in the store's event log."""

    def __init__(self, store: Store, name: str, save_interval: float = 0.5, gap_grace: float = 2.0) -> None:
        self.store = store
        self.name = name
        self.save_interval = save_interval
        self.gap_grace = gap_grace
        #: the gap waited for (the id after which it opens) and since when
        self._gap: tuple[int, float] | None = None
        #: the last event id acknowledged by the bus (or dead-lettered)
        self.position = 0
        self.saved = 0
        self._saved_at = 0.0

    async def load(self) -> int:
        async with self.store.read() as session:
            row = await session.get(BusCursor, self.name)
        self.position = self.saved = row.last_event_id if row else 0
        return self.position

    def advance(self, event_id: int) -> None:
        """Events up to ``event_id`` are in the stream (in memory; :meth:`save` makes it durable)."""
        self.position = max(self.position, event_id)

    @property
    def dirty(self) -> bool:
        return self.position > self.saved

    def save_due(self) -> float:
        """Seconds until a dirty position should be saved (0: now); infinity when clean."""
        if not self.dirty:
            return float("inf")
        return max(0.0, self._saved_at + self.save_interval - time.monotonic())

    async def save(self) -> None:
        if not self.dirty:
            return
        position = self.position
        table = BusCursor.__table__
        async with self.store.write() as tx:
            moved = await tx.session.execute(
                sa.update(table).where(table.c.name == self.name, table.c.last_event_id < position)
                .values(last_event_id=position, updated_at=utcnow()))
            if not moved.rowcount and await tx.session.get(BusCursor, self.name) is None:
                tx.session.add(BusCursor(name=self.name, last_event_id=position, updated_at=utcnow()))
        self.saved = position
        self._saved_at = time.monotonic()

    async def read(self, limit: int) -> list[dict[str, Any]]:
        """The next committed events after the position, oldest first, every user's."""
        # plain rows, not ORM objects: a third of the cost per event, and nothing here is written back
        table = Event.__table__
        query = sa.select(table).where(table.c.id > self.position).order_by(table.c.id).limit(limit)
        async with self.store.read() as session:
            rows: Sequence[Any] = (await session.execute(query)).all()
        events = [event_to_json(row) for row in rows]
        previous = self.position
        for i, ev in enumerate(events):
            if ev["id"] != previous + 1:
                now = time.monotonic()
                if self._gap is None or self._gap[0] != previous:
                    self._gap = (previous, now)
                if now - self._gap[1] < self.gap_grace:
                    return events[:i]
                self._gap = None  # waited long enough: a hole, not a late commit
            previous = ev["id"]
        return events

    def gap_due(self) -> float:
        """Seconds until a gap being waited for is passed (infinity when there is none)."""
        if self._gap is None:
            return float("inf")
        return max(0.0, self._gap[1] + self.gap_grace - time.monotonic())

    async def lag(self) -> int:
        """Committed events the bus has not acknowledged yet."""
        return max(0, await self.store.last_event_id() - self.position)
