"""Stopping the server's background loops (orchestrator, webhooks, alerts, telemetry …).

Why a function of its own: ``task.cancel(); await task`` waits for ever when the task swallows
its cancellation, and Python 3.11's ``asyncio.wait_for`` does exactly that when the future it
waits on completes in the same loop step as the cancel (python/cpython#86296, fixed in 3.12).
A loop of the shape ``while True: await wait_for(wake.wait(), t); …`` then goes round again,
and the server's shutdown hung (seen in CI: the webhooks' loop, woken by a retry as the
server stopped). Cancelling again until the task is done costs nothing when it is not needed.
"""

from __future__ import annotations

import asyncio


async def stop_task(task: asyncio.Task | None, *, recancel_after: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again each ``recancel_after``
    seconds while it runs on. Its own exception, if any, is consumed: each loop logs its errors."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel_after)
    if not task.cancelled():
        task.exception()
