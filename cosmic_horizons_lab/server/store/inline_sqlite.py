"""SQLite through aiosqlite's interface, each call run on the event loop's own thread.

Why: aiosqlite hands every call (a cursor, an execute, a fetch, a close, a commit) to a thread
of its own and back, and a statement is several such calls. Under load on two shared cores
the event loop then waits, each hand-over, for a worker thread the kernel has not scheduled
yet; profiles of the server under the users' load (``benchmarks/bench_api.py``) showed the
loop blocked there about as long as it spent running. The store's statements on a local
WAL-mode file take microseconds each, which is less than one such hand-over.

What makes running them inline safe here: one process writes the file (the server), and its
writes are serialised by :meth:`Store.write`, so no call of ours waits on a lock held by another
call of ours; readers never wait in WAL mode. A long read (an analytics export) holds the loop
while SQLite computes it, as it held the worker thread before.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import make_url


class InlineConnection(aiosqlite.Connection):
    """An :class:`aiosqlite.Connection` whose calls run where they are awaited; no thread."""

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._connect().__await__()

    def stop(self) -> None:  # type: ignore[override]
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.stop()


def inline_creator(url: str) -> Any:
    """``create_async_engine(url, async_creator=…)`` for ``url`` (``sqlite+aiosqlite:///…``)."""
    args, kwargs = SQLiteDialect_aiosqlite().create_connect_args(make_url(url))
    kwargs.setdefault("check_same_thread", False)
    connector = partial(sqlite3.connect, *args, **kwargs)

    def create() -> InlineConnection:
        return InlineConnection(connector, 64)

    return create
