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
