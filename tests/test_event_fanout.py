"""The bus's coalesced fan-out (``server/events.py``): commits close together go out as one
message per connection, every event once and in id order, and the wait before a send is bounded.

The messages are checked by decoding them with the standard JSON parser and by reading the
frames back with the ``websockets`` package's parser, not with the bus's own helpers.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from cosmic_horizons_lab.server.events import MAX_SEND_GAP, SEND_SHARE, EventBus, Wire


def _ev(i: int, user: str = "astro") -> dict[str, Any]:
    return {"id": i, "type": "job.progress", "job_id": "j", "user": user, "ts": "2026-01-01T00:00:00+00:00",
            "correlation_id": None, "payload": {"n": i}}


class _Socket:
    """A caught-up connection as the stream handler is to the bus: it takes every wire at once."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.frames: list[bytes] = []

    def write(self, wire: Wire) -> bool:
        self.messages.append(json.loads(wire.data))
        self.frames.append(wire.frame)
        return True

    def events(self) -> list[int]:
        out = []
        for m in self.messages:
            out.extend(e["id"] for e in (m if isinstance(m, list) else [m]))
        return out


def _subscribe(bus: EventBus, user: str = "astro") -> _Socket:
    sock = _Socket()
    sub = bus.subscribe(user)
    sub.direct = sock.write
    sub._waiting = True  # its writer waits for news: the bus writes to it directly
    return sock


async def test_commits_within_the_interval_go_out_as_one_message_each_event_once_in_order():
    bus = EventBus(min_interval=0.05)
    a, b = _subscribe(bus), _subscribe(bus)
    other = _subscribe(bus, "bob")
    bus.publish([_ev(1)])  # the first commit goes out at once: nothing was sent lately
    assert a.events() == [1] and b.events() == [1]
    for i in range(2, 12):  # ten more commits inside the interval: held, then sent together
        bus.publish([_ev(i)])
    bus.publish([_ev(12, "bob")])
    assert a.events() == [1], "held until the interval has passed"
    await asyncio.sleep(0.12)
    for sock in (a, b):
        assert sock.events() == list(range(1, 12))
        assert len(sock.messages) == 2, "one message for the ten held commits"
        assert isinstance(sock.messages[1], list) and len(sock.messages[1]) == 10
    assert other.events() == [12], "each user gets only their own events"
    assert bus.published == 12


async def test_a_subscriber_that_replayed_past_held_events_gets_none_twice():
    bus = EventBus(min_interval=0.05)
    _subscribe(bus)  # someone is listening, so the bus holds events for the user
    bus.publish([_ev(1)])
    bus.publish([_ev(2)])  # held
    # a client connecting now replays from memory: it already has 1 and 2
    late = bus.subscribe("astro")
    replayed = bus.recent.replay("astro", 0)
    assert replayed is None or [i for i, _ in replayed] == [1, 2]
    late.last = 2
    sock = _Socket()
    late.direct, late._waiting = sock.write, True
    await asyncio.sleep(0.12)
    assert sock.messages == [], "the held events are not written again to a client that has them"
    # they are parked for its writer, which drops what it has already sent (stream.py: `fresh`)
    assert [i for i, _ in late.pending if i > late.last] == []


def test_the_wait_after_a_send_follows_its_duration_up_to_a_bound():
    bus = EventBus(min_interval=0.005)
    sock = _subscribe(bus)
    bus.publish([_ev(1)])  # no running loop: sent at once
    assert sock.events() == [1] and bus._gap == 0.005, "a quick send: the minimum wait"
    slow = bus.subscribe("astro")
    pause = [0.1]

    def slow_write(wire: Wire) -> bool:
        time.sleep(pause[0])  # a send to hundreds of sockets on a loaded machine
        return True

    slow.direct, slow._waiting = slow_write, True
    bus.publish([_ev(2)])
    assert sock.events() == [1, 2]
    assert bus._gap == MAX_SEND_GAP < 0.1, "the next send waits no longer than the bound"
    pause[0] = 0.006
    bus.publish([_ev(3)])
    # sending takes at most its share of the loop: 6 ms sent, 18 ms (and a little) waited
    assert sock.events() == [1, 2, 3]
    assert 0.006 * (1 / SEND_SHARE - 1) <= bus._gap <= MAX_SEND_GAP


async def test_the_shared_frame_is_a_valid_server_text_frame():
    """Every caught-up socket is sent the same bytes: read back by the ``websockets`` package's
    own client-side parser (RFC 6455), short and 64-bit lengths alike."""
    from websockets.frames import Opcode
    from websockets.protocol import Protocol, Side, State

    bus = EventBus(min_interval=0.0)
    sock = _subscribe(bus)
    bus.publish([_ev(1), _ev(2)])
    bus.publish([_ev(3) | {"payload": {"pad": "x" * 70_000}}])  # a 64-bit length
    client = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    client.receive_data(b"".join(sock.frames))
    frames = client.events_received()
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.TEXT] and all(f.fin for f in frames)
    got = [json.loads(f.data) for f in frames]
    assert got == sock.messages
    assert [e["id"] for e in got[0]] == [1, 2] and got[1]["id"] == 3
