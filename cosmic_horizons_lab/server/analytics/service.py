"""The usage analytics service: who may see what, a fresh enough export, and the questions.

A request exports first when the last export is older than ``freshness`` seconds (one export at
a time; requests that arrive meanwhile wait for it and share it), then asks DuckDB in a worker
thread. A background task exports every ``freshness`` seconds too (at least every
:data:`MIN_INTERVAL`), so a request seldom waits, and the first, full export of a large store is
done after the server starts rather than in a request. Users see their own account and their own jobs in the agents' figures; operators see
every account, everyone's agents' figures and the leaderboard (which is operators' only unless
``leaderboard_public``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.protocol.clock import isoformat, utcnow
from cosmic_horizons_lab.server.analytics import requests
from cosmic_horizons_lab.server.analytics.export import JOBS, RUNS, SAMPLES, ParquetExport
from cosmic_horizons_lab.server.analytics.queries import Analytics
from cosmic_horizons_lab.server.background import stop_task
from cosmic_horizons_lab.server.errors import Forbidden
from cosmic_horizons_lab.server.store.database import Store

log = logging.getLogger(__name__)

#: The background export's shortest period (seconds).
MIN_INTERVAL = 5.0


class UsageAnalytics:
    def __init__(
        self,
        store: Store,
        directory: Path,
        *,
        freshness: float = 30.0,
        leaderboard_public: bool = False,
        compact_parts: int = 32,
        threads: int | None = None,
    ) -> None:
        self.export = ParquetExport(store, directory)
        self.analytics = Analytics(self.export.parts, threads=threads)
        self.freshness = freshness
        self.leaderboard_public = leaderboard_public
        self.compact_parts = compact_parts
        self._exported_at: float | None = None
        self._exported_wall: Any = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await stop_task(self._task)  # the loop itself catches everything else

    async def _loop(self) -> None:
        while True:
            try:
                await self.fresh()
                # compaction runs here, never in a request's way
                for table in (JOBS, RUNS, SAMPLES):
                    if len(self.export.parts(table)) > self.compact_parts:
                        await self.export.compact(table)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the usage analytics' export failed")
            await asyncio.sleep(max(self.freshness, MIN_INTERVAL))

    async def fresh(self) -> None:
        """Export unless the last export is younger than ``freshness``."""
        if self._is_fresh():
            return
        async with self._lock:
            if self._is_fresh():
                return
            await self.export.export()
            self._exported_at, self._exported_wall = time.monotonic(), utcnow()

    async def _ask(self, question: Any, *args: Any) -> Any:
        """Ask DuckDB in a worker thread; once more if a part went away under it (a compaction
        removes the parts it folded: the second listing has the folded part instead)."""
        import duckdb

        try:
            return await asyncio.to_thread(question, *args)
        except duckdb.IOException:
            return await asyncio.to_thread(question, *args)

    def _is_fresh(self) -> bool:
        return self._exported_at is not None and time.monotonic() - self._exported_at < self.freshness

    def _stamp(self, query: requests.UsageQuery) -> dict[str, Any]:
        return {"period": query.period, "from_date": isoformat(query.start), "to_date": isoformat(query.end),
                "exported_at": isoformat(self._exported_wall)}

    async def account(self, caller: str, operator: bool, user: str, raw: dict[str, str]) -> dict[str, Any]:
        query = requests.parse(raw, requests.ACCOUNT_QUERY)  # a bad query is a 400 for anyone
        if user != caller and not operator:
            raise Forbidden(f"only operators see another user's account ('{user}')", field="user")
        await self.fresh()
        figures = await self._ask(self.analytics.account, user, query.period, query.start, query.end)
        return {"user": user, **self._stamp(query), **figures}

    async def leaderboard(self, operator: bool, raw: dict[str, str]) -> dict[str, Any]:
        query = requests.parse(raw, requests.LEADERBOARD_QUERY)
        if not (operator or self.leaderboard_public):
            raise Forbidden("the leaderboard is for operators", field=None)
        await self.fresh()
        items = await self._ask(self.analytics.leaderboard, query.by, query.limit, query.start, query.end)
        return {**self._stamp(query), "by": query.by, "limit": query.limit, "items": items}

    async def agents(self, caller: str, operator: bool, raw: dict[str, str]) -> dict[str, Any]:
        query = requests.parse(raw, requests.AGENTS_QUERY)
        await self.fresh()
        scope = None if operator else caller
        items = await self._ask(self.analytics.agents, scope, query.period, query.start, query.end)
        return {**self._stamp(query), "user": caller, "operator": operator, "scope": "all" if operator else "own",
                "agents": items}
