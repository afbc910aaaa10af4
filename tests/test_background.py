"""Stopping the server's background loops: a swallowed cancellation must not hang shutdown.

The loop below has the shape of the server's (``while True: await asyncio.wait_for(wake.wait(),
t)``). On Python 3.11 ``asyncio.wait_for`` swallows a cancel that arrives in the loop step in
which its inner wait completed (python/cpython#86296), so a plain ``task.cancel(); await task``
never returns; the shutdown of a CI run hung there in the webhooks' loop.
"""

from __future__ import annotations

import asyncio
import sys

from cosmic_horizons_lab.server.background import stop_task


async def _wake_loop(wake: asyncio.Event, rounds: list[int]) -> None:
    while True:
        try:
            await asyncio.wait_for(wake.wait(), timeout=5)
        except asyncio.TimeoutError:
            pass
        wake.clear()
        rounds.append(1)


async def _loop_woken_as_it_is_cancelled() -> tuple[asyncio.Task, asyncio.Event]:
    wake, rounds = asyncio.Event(), []
    task = asyncio.create_task(_wake_loop(wake, rounds))
    for _ in range(3):
        await asyncio.sleep(0)  # the loop waits inside wait_for
    wake.set()
    await asyncio.sleep(0)  # its inner wait completes in this step …
    task.cancel()  # … and the cancel arrives before wait_for has returned
    return task, wake


async def test_a_plain_cancel_can_be_swallowed_on_this_python():
    task, _ = await _loop_woken_as_it_is_cancelled()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    if sys.version_info < (3, 12):
        assert not done, "the race this module guards against did not happen"
    await stop_task(task)
    assert task.done()


async def test_stop_task_ends_a_loop_that_swallowed_its_cancellation():
    for _ in range(20):
        task, _ = await _loop_woken_as_it_is_cancelled()
        await asyncio.wait_for(stop_task(task, recancel_after=0.05), timeout=5)
        assert task.cancelled()


async def test_stop_task_consumes_the_loops_own_error_and_accepts_none():
    async def fails() -> None:
        raise RuntimeError("the loop's own error")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await stop_task(task)
    assert isinstance(task.exception(), RuntimeError)
    await stop_task(None)
