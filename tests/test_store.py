"""The store on real SQLite and PostgreSQL: migrations keep data, transitions and events commit together."""

from __future__ import annotations

import sqlalchemy as sa
import pytest
from alembic import command

from cosmic_horizons_lab.protocol.clock import utcnow
from cosmic_horizons_lab.server.store.database import Store, alembic_config

def _head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


BOTH = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


@BOTH
async def test_upgrade_from_the_first_revision_keeps_existing_jobs(db_url):
    store = Store(db_url)
    async with store.engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0001"))
        now = utcnow()
        await conn.execute(sa.text(
            "INSERT INTO jobs (id, \"user\", agent, status, progress, priority, params, metrics, correlation_id, "
            "depends_on, backend, server_id, gpu_count, retries, attempts, created_at, updated_at) VALUES "
            "('j1', 'astro', 'Script', 'COMPLETED', 1.0, 5, '{}', '{}', 'c', '[]', 'local', 's', 1, 0, 1, :t, :t)"
        ), {"t": now.replace(tzinfo=None) if store.is_sqlite else now})
    assert await store.revision() == "0001"
    await store.open()
    assert await store.revision() == _head()
    async with store.read() as session:
        rows = (await session.execute(sa.text("SELECT id, status FROM jobs"))).all()
        tables = await session.run_sync(lambda s: sa.inspect(s.connection()).get_table_names())
    assert rows == [("j1", "COMPLETED")]
    assert {"jobs", "runs", "events", "batches", "gpu_samples"} <= set(tables)
    await store.close()


@BOTH
async def test_a_failed_transaction_publishes_nothing_and_writes_nothing(db_url):
    published: list = []
    store = Store(db_url, publish=published.extend)
    await store.open()
    with pytest.raises(RuntimeError):
        async with store.write() as tx:
            tx.emit("job.submitted", user="astro", payload={"n": 1})
            raise RuntimeError("boom")
    assert published == [] and await store.last_event_id() == 0
    async with store.write() as tx:
        tx.emit("job.submitted", user="astro", payload={"n": 1})
        tx.emit("job.queued", user="astro", payload={"n": 2})
    assert [e["payload"]["n"] for e in published] == [1, 2]
    assert published[0]["id"] < published[1]["id"]
    assert published[0]["ts"].endswith("+00:00")
    assert [e["id"] for e in await store.events_after("astro", 0)] == [e["id"] for e in published]
    assert await store.events_after("someone-else", 0) == []
    await store.close()


async def test_sqlite_runs_in_wal_mode(tmp_path):
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    await store.open()
    async with store.read() as session:
        mode = (await session.execute(sa.text("PRAGMA journal_mode"))).scalar()
    assert mode == "wal"
    await store.close()


@BOTH
async def test_the_migrations_build_the_schema_the_orm_declares(db_url):
    """Alembic's own comparison of the migrated database with the ORM's metadata: an index,
    column or table declared in one place and not the other is a difference."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from cosmic_horizons_lab.server.store.orm import Base

    store = Store(db_url)
    await store.open()
    async with store.engine.connect() as conn:
        diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
    await store.close()
    indexes = [d for d in diff if isinstance(d, tuple) and d[0] in ("add_index", "remove_index")]
    assert indexes == [], indexes
    assert not [d for d in diff if isinstance(d, tuple) and d[0] in ("add_table", "remove_table", "add_column", "remove_column")]


async def test_dispatch_reads_its_first_jobs_off_the_index_without_sorting(tmp_path):
    """SQLite's planner on dispatch's own query: the order comes from ``ix_jobs_dispatch_order``,
    no temporary B-tree sorts the queued jobs, however many there are."""
    from sqlalchemy.dialects import sqlite

    from cosmic_horizons_lab.server.jobs.dispatch import queued_first

    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await store.open()
    for seen in ([], ["a", "b"]):
        query = queued_first("host:/work", 8, seen).compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
        async with store.read() as session:
            plan = " | ".join(row[-1] for row in (await session.execute(sa.text(f"EXPLAIN QUERY PLAN {query}"))).all())
        assert "ix_jobs_dispatch_order" in plan and "TEMP B-TREE" not in plan, plan
    await store.close()
