"""The job store: SQLAlchemy 2 async over SQLite (embedded) or PostgreSQL (shared).

All writes go through :meth:`Store.write`, one transaction at a time: a
transition and the event that records it commit together (the outbox), and
the events are published to live subscribers right after the commit and
before the next writer starts, so subscribers see events in id order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from cosmic_horizons_lab.protocol.clock import isoformat, utcnow
from cosmic_horizons_lab.server.store.inline_sqlite import inline_creator
from cosmic_horizons_lab.server.store.orm import Event, JobRecord

PublishFn = Callable[[list[dict[str, Any]]], None]

MIGRATIONS = str(Path(__file__).parent / "migrations")


@dataclass
class NewEvent:
    """An event emitted in a transaction, not written yet: :meth:`Store.write` writes every one
    of a transaction with one ``INSERT … RETURNING id`` at its end, and stamps them. The ORM
    would make each an object of its unit of work (identity map, state, cascade) that
    nothing reads again: for the burst of a thousand submissions, a few percent of the
    server's time."""

    type: str
    job_id: str | None
    user: str
    correlation_id: str | None
    payload: dict[str, Any]
    ts: datetime | None = None
    id: int | None = None


def event_to_json(ev: Event | NewEvent) -> dict[str, Any]:
    return {
        "id": ev.id,
        "type": ev.type,
        "job_id": ev.job_id,
        "user": ev.user,
        "ts": isoformat(ev.ts),
        "correlation_id": ev.correlation_id,
        "payload": ev.payload or {},
    }


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@dataclass
class Tx:
    """One write transaction: the session plus the events it records."""

    session: AsyncSession
    events: list[NewEvent] = field(default_factory=list)

    def emit(
        self,
        type_: str,
        *,
        user: str,
        job: JobRecord | None = None,
        payload: dict[str, Any] | None = None,
    ) -> NewEvent:
        """Record an event; it commits with the transaction (its id and time are set then)."""
        ev = NewEvent(type=type_, job_id=job.id if job else None, user=user,
                      correlation_id=job.correlation_id if job else None, payload=payload or {})
        self.events.append(ev)
        return ev


class Store:
    """Engine, migrations and the serialised write path."""

    def __init__(self, url: str, publish: PublishFn | None = None, echo: bool = False) -> None:
        self.url = url
        self.publish = publish
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if not self.is_sqlite:
            kwargs.update(pool_size=5, max_overflow=5, pool_pre_ping=True)
        elif "+aiosqlite" in url:
            # no thread hand-over per call: see store/inline_sqlite.py
            kwargs["async_creator"] = inline_creator(url)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            sa_event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        """Bring the schema to the newest revision (creating it on first use)."""
        if self.is_sqlite:
            db_path = self.url.split("///", 1)[-1]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            await conn.run_sync(lambda sync_conn: command.upgrade(alembic_config(sync_conn), "head"))

    async def close(self) -> None:
        await self.engine.dispose()

    async def revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        """A write transaction; its events are published after commit, in id order."""
        async with self._write_lock:
            async with self.sessions() as session:
                tx = Tx(session)
                async with session.begin():
                    yield tx
                    await session.flush()
                    if tx.events:
                        await _write_events(session, tx.events)
                if tx.events and self.publish is not None:
                    self.publish([event_to_json(ev) for ev in tx.events])

    async def events_after(
        self, user: str, after: int, *, job_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """A user's events (or one job's) with id > ``after``, oldest first."""
        query = sa.select(Event).where(Event.user == user, Event.id > after)
        if job_id is not None:
            query = query.where(Event.job_id == job_id)
        query = query.order_by(Event.id).limit(limit)
        async with self.read() as session:
            rows: Sequence[Event] = (await session.scalars(query)).all()
        return [event_to_json(ev) for ev in rows]

    async def events_tail(self, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The newest ``limit`` events of every user, oldest first, and the newest id.

        Read under the write lock: no commit (and so no publish) falls between this read and
        what the caller does with it before its next await.
        """
        async with self._write_lock:
            async with self.read() as session:
                rows: Sequence[Event] = (await session.scalars(
                    sa.select(Event).order_by(Event.id.desc()).limit(limit))).all()
            events = [event_to_json(ev) for ev in reversed(rows)]
            return events, (events[-1]["id"] if events else await self.last_event_id())

    async def last_event_id(self, user: str | None = None) -> int:
        query = sa.select(sa.func.max(Event.id))
        if user is not None:
            query = query.where(Event.user == user)
        async with self.read() as session:
            return (await session.scalar(query)) or 0


async def _write_events(session: AsyncSession, events: list[NewEvent]) -> None:
    """One statement for the transaction's events; each gets its id, in the order emitted."""
    # An event's time is when it is committed (the outbox's moment), which is also what
    # delivery latency is measured from.
    stamp = utcnow()
    table = Event.__table__
    ids = (await session.execute(
        sa.insert(table).returning(table.c.id, sort_by_parameter_order=True),
        [{"type": ev.type, "job_id": ev.job_id, "user": ev.user, "ts": stamp,
          "correlation_id": ev.correlation_id, "payload": ev.payload} for ev in events],
    )).scalars().all()
    for ev, event_id in zip(events, ids, strict=True):
        ev.id, ev.ts = event_id, stamp


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (status polls, history) run while the single writer commits;
    # NORMAL sync is durable across application crashes, which is what we need.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _current_revision(sync_conn: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(sync_conn).get_current_revision()
