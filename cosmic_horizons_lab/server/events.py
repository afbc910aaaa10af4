"""Live fan-out of committed events to the WebSocket connections of their user.

The store publishes each committed transaction's events here, in id order.
Each connection has a :class:`Subscription` that buffers events until its
writer sends them, batched: a burst becomes one message per connection rather
than one per event, which is what keeps a hundred viewers cheap on two cores.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

Event = dict[str, Any]
#: An event as subscribers get it: its id and its JSON text, serialised once for all of them.
Encoded = tuple[int, str]


def encode(event: Event) -> Encoded:
    return event["id"], json.dumps(event, separators=(",", ":"), default=str)


def message(batch: list[Encoded]) -> str:
    """One WebSocket message: an event object, or a JSON list of them."""
    return batch[0][1] if len(batch) == 1 else "[" + ",".join(text for _, text in batch) + "]"


class Subscription:
    """One connection's buffer of pending events."""

    def __init__(self, bus: "EventBus", user: str, max_pending: int) -> None:
        self.bus = bus
        self.user = user
        self.max_pending = max_pending
        self.pending: list[Encoded] = []
        self.overflowed = False
        self._ready = asyncio.Event()

    def push(self, events: list[Encoded]) -> None:
        if self.overflowed:
            return
        self.pending.extend(events)
        if len(self.pending) > self.max_pending:
            # A reader this far behind reconnects and replays from the store.
            self.overflowed = True
            self.pending.clear()
        self._ready.set()

    async def next_batch(self) -> list[Encoded]:
        """Wait for events and take all that are pending."""
        while not self.pending and not self.overflowed:
            self._ready.clear()
            await self._ready.wait()
        batch, self.pending = self.pending, []
        return batch

    def close(self) -> None:
        self.bus._subs[self.user].discard(self)


class EventBus:
    def __init__(self, max_pending: int = 50_000) -> None:
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self.max_pending = max_pending
        self.published = 0

    def subscribe(self, user: str) -> Subscription:
        sub = Subscription(self, user, self.max_pending)
        self._subs[user].add(sub)
        return sub

    def publish(self, events: list[Event]) -> None:
        by_user: dict[str, list[Encoded]] = defaultdict(list)
        for ev in events:
            if ev["user"] in self._subs and self._subs[ev["user"]]:
                by_user[ev["user"]].append(encode(ev))
        for user, evs in by_user.items():
            for sub in list(self._subs.get(user, ())):
                sub.push(evs)
        self.published += len(events)

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())
