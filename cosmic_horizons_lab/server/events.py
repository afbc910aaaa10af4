"""Live fan-out of committed events to the WebSocket connections of their user.

The store publishes each committed transaction's events here, in id order. Each event is
encoded once; the commits of a few milliseconds are sent together (see :class:`EventBus`),
framed once for all connections; a connection that is caught up and idle is written
to at once with those bytes, and one that is behind (replaying, or a slow reader) gets them
buffered in its :class:`Subscription`, which its writer sends batched: a burst becomes one
message per connection rather than one per event. :class:`RecentEvents` keeps the newest
events so that clients reconnecting together (after a restart) replay from memory.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]
#: the longest wait between two sends of the fan-out (seconds), however long the last one took
MAX_SEND_GAP = 0.04
#: the most of the event loop's time the fan-out takes under a burst: after a send of ``t``
#: seconds the next waits ``t * (1 / SEND_SHARE - 1)``. A send is a system call per
#: connection; to 500 of them it takes milliseconds, and at a half share (the wait equal to
#: the send) the submissions of a burst got 485-513 a second at 500 clients, against 560-662
#: at a quarter, with delivery p99 17-18 ms against 30-37 (``bench_api.py users500``). To 100
#: connections a send is short, and the ``min_interval`` decides.
SEND_SHARE = 0.25
#: An event as subscribers get it: its id and its JSON text, serialised once for all of them.
Encoded = tuple[int, str]


def encode(event: Event) -> Encoded:
    return event["id"], json.dumps(event, separators=(",", ":"), default=str)


def message(batch: list[Encoded]) -> str:
    """One WebSocket message: an event object, or a JSON list of them."""
    return batch[0][1] if len(batch) == 1 else "[" + ",".join(text for _, text in batch) + "]"


def text_frame(data: bytes) -> bytes:
    """``data`` as one final, unmasked WebSocket text frame (RFC 6455 §5.2), as a server sends it.

    Without per-connection compression every caught-up connection is sent the same bytes, so
    the frame is built once per commit rather than once per connection.
    """
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + data


@dataclass
class Wire:
    """One commit's events as every caught-up connection is sent them: the text and its frame."""

    data: bytes
    frame: bytes


class Subscription:
    """One connection's buffer of pending events, or, while it is idle and caught up, its wire.

    A connection that has replayed what it missed and waits for news is written to directly
    by :meth:`EventBus.publish`, with the message text built once for all such connections:
    a hundred task wake-ups and a hundred encodings per commit were most of the fan-out's cost.
    A connection whose socket is still busy (a slow reader) gets its events buffered instead,
    and its writer sends them when the socket has drained.
    """

    def __init__(self, bus: EventBus, user: str, max_pending: int) -> None:
        self.bus = bus
        self.user = user
        self.max_pending = max_pending
        self.pending: list[Encoded] = []
        self.overflowed = False
        #: the newest event id this connection has been sent
        self.last = 0
        #: ``write(wire) -> bool``: sends one message now, False when the socket is busy
        self.direct: Callable[[Wire], bool] | None = None
        self._waiting = False
        self._ready = asyncio.Event()

    def push(self, events: list[Encoded], wire: Wire | None = None) -> None:
        if self.overflowed:
            return
        if (wire is not None and self._waiting and not self.pending and self.direct is not None
                and events[0][0] > self.last and self.direct(wire)):
            self.last = events[-1][0]
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
            self._waiting = True
            try:
                await self._ready.wait()
            finally:
                self._waiting = False
        batch, self.pending = self.pending, []
        return batch

    def close(self) -> None:
        self.direct = None
        self.bus._subs[self.user].discard(self)


class RecentEvents:
    """The newest committed events, encoded, per user: what a reconnecting client replays.

    After a restart, hundreds of clients reconnect at once, each asking for what it missed;
    answered from the store, that is a session and an ORM load per client. This holds every
    event with an id above ``covered_after``, so a replay from there is a slice of a list.
    It is used only where this server is the one writer of the events (SQLite): ids then
    arrive here consecutive, and a gap (an event written without being published) empties it
    and starts it again past the gap, so it never answers with an event missing.
    """

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        #: every event with a greater id is here; None until :meth:`load` (then replay asks the store)
        self.covered_after: int | None = None
        self.last = 0
        self._ids: dict[str, list[int]] = {}
        self._texts: dict[str, list[str]] = {}
        #: per user: the newest id dropped to keep the size (that user's replay starts above it)
        self._dropped: dict[str, int] = {}

    def load(self, events: list[Event], last_id: int) -> None:
        """Start from the store's newest events (``last_id`` the newest id), read with no commit in between."""
        self._ids, self._texts, self._dropped = {}, {}, {}
        self.covered_after = self.last = last_id
        if events and events[-1]["id"] == last_id:
            # keep the consecutive tail only
            start = len(events) - 1
            while start > 0 and events[start - 1]["id"] == events[start]["id"] - 1:
                start -= 1
            self.covered_after = events[start]["id"] - 1
            for ev in events[start:]:
                self._add(ev["user"], encode(ev))

    def add(self, user: str, item: Encoded) -> None:
        if self.covered_after is None:
            return
        if item[0] != self.last + 1:  # a gap: what lies in it is not here, so start again past it
            self._ids, self._texts, self._dropped = {}, {}, {}
            self.covered_after = item[0] - 1
        self._add(user, item)

    def _add(self, user: str, item: Encoded) -> None:
        ids = self._ids.setdefault(user, [])
        texts = self._texts.setdefault(user, [])
        ids.append(item[0])
        texts.append(item[1])
        self.last = item[0]
        if len(ids) > self.per_user + self.per_user // 4:  # trim in chunks, not on every event
            cut = len(ids) - self.per_user
            self._dropped[user] = ids[cut - 1]
            del ids[:cut], texts[:cut]

    def replay(self, user: str, after: int) -> list[Encoded] | None:
        """The user's events with id > ``after``, oldest first; None when they may not all be here."""
        if self.covered_after is None or after < max(self.covered_after, self._dropped.get(user, 0)):
            return None
        ids = self._ids.get(user, [])
        i = bisect.bisect_right(ids, after)
        return list(zip(ids[i:], self._texts.get(user, [])[i:]))


class EventBus:
    """Fan-out of committed events to the subscriptions of their user.

    Sends are coalesced: a commit's events go out at once when the last send was at least
    ``min_interval`` seconds ago, and otherwise with the other commits of that interval, as one
    message per connection. Every send is a system call per connection (100 to 500 of them on
    the cores the server shares with its jobs), and each message is a wake-up for every
    client; under a burst of commits this bounds both at ``1 / min_interval`` a second while
    adding at most ``min_interval`` to a delivery. The interval grows with the last send's own
    duration (a send to 500 sockets takes milliseconds on this machine), so that sending
    takes at most ``send_share`` of the loop's time and requests and commits get the rest.
    Everything else (the ids, the order, the replay memory) is settled at publish time, in
    commit order.
    """

    def __init__(self, max_pending: int = 50_000, recent_per_user: int = 20_000, min_interval: float = 0.005,
                 send_share: float = SEND_SHARE) -> None:
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self.max_pending = max_pending
        self.published = 0
        self.recent = RecentEvents(recent_per_user)
        self._warming: asyncio.Lock | None = None
        self.min_interval = min_interval
        self.send_share = send_share
        #: per user: encoded events committed but not yet sent, in id order
        self._outbox: dict[str, list[Encoded]] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._last_flush = float("-inf")
        #: the wait between two sends: ``min_interval``, or longer after a long send (``send_share``)
        self._gap = min_interval

    async def warm(self, store: Any) -> None:
        """Fill :attr:`recent` from the store once, where this server is its one writer (SQLite)."""
        if self.recent.covered_after is not None or not getattr(store, "is_sqlite", False):
            return
        if self._warming is None:
            self._warming = asyncio.Lock()
        async with self._warming:
            if self.recent.covered_after is None:
                events, last_id = await store.events_tail(self.recent.per_user)
                self.recent.load(events, last_id)

    def subscribe(self, user: str) -> Subscription:
        sub = Subscription(self, user, self.max_pending)
        self._subs[user].add(sub)
        return sub

    def publish(self, events: list[Event]) -> None:
        """Take one commit's events (in id order): remembered now, sent now or within ``min_interval``."""
        outbox = self._outbox
        for ev in events:
            item = encode(ev)
            self.recent.add(ev["user"], item)
            if self._subs.get(ev["user"]):
                outbox.setdefault(ev["user"], []).append(item)
        self.published += len(events)
        if not outbox or self._flush_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): send now
            self.flush()
            return
        wait = self._last_flush + self._gap - loop.time()
        if wait <= 0:
            self.flush()
        else:
            self._flush_handle = loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Send what is waiting: per user, one message for every caught-up connection."""
        self._flush_handle = None
        outbox, self._outbox = self._outbox, {}
        started = time.perf_counter()
        for user, evs in outbox.items():
            subs = self._subs.get(user)
            if not subs:
                continue
            data = message(evs).encode()  # one message for every caught-up connection
            wire = Wire(data, text_frame(data))
            for sub in list(subs):
                sub.push(evs, wire)
        took = time.perf_counter() - started
        wait = took * (1 / self.send_share - 1)
        self._gap = min(max(self.min_interval, wait), MAX_SEND_GAP)  # a GC pause must not hold the next send
        try:
            self._last_flush = asyncio.get_running_loop().time()
        except RuntimeError:
            pass

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())
