"""The live event stream: authenticated, per user, resumable with no loss and no duplicates."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from tornado.httpclient import HTTPClientError

QUICK = "from cosmic_horizons_lab.executor import report\nreport(progress=0.5, visibilities_processed=7)\n"


async def _read_events(ws, until, timeout: float = 20.0) -> list[dict]:
    """Messages are one event or a list of events; collect until ``until(events)``."""
    got: list[dict] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while not until(got):
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"timed out; got {[e['type'] for e in got]}"
        msg = await asyncio.wait_for(ws.read_message(), remaining)
        assert msg is not None, "the server closed the stream"
        data = json.loads(msg)
        got.extend(data if isinstance(data, list) else [data])
    return got


def _terminal_count(events: list[dict]) -> int:
    return sum(e["type"] in ("job.completed", "job.failed", "job.cancelled") for e in events)


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_stream_delivers_live_events_and_resumes_without_loss(jp_ws_fetch, api, script):
    path = script(QUICK)
    ws = await jp_ws_fetch("cosmic-horizons", "api", "events", params={"after": 0})
    _, first, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}})
    live = await _read_events(ws, lambda ev: _terminal_count(ev) >= 1)
    assert [e["type"] for e in live][0] == "job.submitted" and live[-1]["type"] == "job.completed"
    assert all(e["job_id"] == first["id"] for e in live)
    last_seen = live[-1]["id"]
    ws.close()

    # While disconnected, two more jobs run to the end.
    ids = [(await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}}))[1]["id"] for _ in range(2)]
    for job_id in ids:
        await api.wait_for(job_id)
    _, replay_a, _ = await api.get(f"jobs/{ids[0]}/events")
    _, replay_b, _ = await api.get(f"jobs/{ids[1]}/events")
    missed = sorted(e["id"] for e in replay_a["events"] + replay_b["events"])

    ws = await jp_ws_fetch("cosmic-horizons", "api", "events", params={"after": last_seen})
    resumed = await _read_events(ws, lambda ev: len(ev) >= len(missed))
    # then one more live job, to show the stream goes on after the replay
    _, third, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}})
    more = await _read_events(ws, lambda ev: _terminal_count(ev) >= 1)
    ws.close()
    assert [e["id"] for e in resumed] == missed, "the replay must be exactly the missed events, in order"
    all_ids = [e["id"] for e in resumed + more]
    assert all_ids == sorted(set(all_ids)), "no duplicates, increasing ids"
    assert {e["job_id"] for e in more} == {third["id"]}


async def test_stream_is_per_user(jp_ws_fetch, api, script):
    path = script(QUICK)
    bob = await jp_ws_fetch("cosmic-horizons", "api", "events", params={"after": 0}, headers={"X-Test-User": "bob"})
    _, alice_job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}}, user="alice")
    await api.wait_for(alice_job["id"], user="alice")
    _, bob_job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}}, user="bob")
    events = await _read_events(bob, lambda ev: _terminal_count(ev) >= 1)
    bob.close()
    assert {e["job_id"] for e in events} == {bob_job["id"]}
    assert {e["user"] for e in events} == {"bob"}


async def test_stream_refuses_bad_tokens_and_bad_cursors(jp_ws_fetch, lab):
    with pytest.raises(HTTPClientError) as err:
        await jp_ws_fetch("cosmic-horizons", "api", "events", headers={"Authorization": "token nope"})
    assert err.value.code == 403
    with pytest.raises(HTTPClientError) as err:
        await jp_ws_fetch("cosmic-horizons", "api", "events", params={"after": "soon"})
    assert err.value.code == 400


async def test_events_latest_is_where_a_live_only_client_starts(api, script):
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(QUICK)}})
    await api.wait_for(job["id"])
    _, cursor, _ = await api.get("events/latest")
    _, events, _ = await api.get(f"jobs/{job['id']}/events")
    assert cursor["last_event_id"] == events["events"][-1]["id"]
    _, other, _ = await api.get("events/latest", user="nobody")
    assert other["last_event_id"] == 0


async def test_a_burst_is_batched_into_few_messages(jp_ws_fetch, api, lab, script):
    """A hundred events published at once reach a connection in a handful of messages."""
    ws = await jp_ws_fetch("cosmic-horizons", "api", "events", params={"after": 0})
    lab.orchestrator._backend_retry_at = float("inf")
    body = {"jobs": [{"agent": "Script", "params": {"path": script(QUICK)}} for _ in range(100)]}
    await api.post("jobs/submit-batch", body)
    messages = 0
    got: list[dict] = []
    while len(got) < 100:
        data = json.loads(await asyncio.wait_for(ws.read_message(), 10))
        got.extend(data if isinstance(data, list) else [data])
        messages += 1
    ws.close()
    assert [e["type"] for e in got] == ["job.submitted"] * 100
    assert messages <= 3


async def test_the_stream_socket_sends_small_frames_without_nagle_delay(jp_ws_fetch, api, lab, script):
    """Each event leaves in a small frame, often right behind the previous one. With Nagle's
    algorithm on, such a frame waits for the client's ACK of the last, which clients delay
    (40 ms on Linux): the tail of delivery latency under a burst. The server's own socket
    (found through its subscription) must have TCP_NODELAY set, and events still flow."""
    ws = await jp_ws_fetch("cosmic-horizons", "api", "events", params={"after": 0})
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(QUICK)}})
    got = await _read_events(ws, lambda ev: _terminal_count(ev) >= 1)
    assert got[-1]["type"] == "job.completed"
    handlers = [sub.direct.__self__ for subs in lab.bus._subs.values() for sub in subs if sub.direct is not None]
    assert handlers, "the caught-up connection is written to directly"
    for handler in handlers:
        sock = handler.ws_connection.stream.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    ws.close()
