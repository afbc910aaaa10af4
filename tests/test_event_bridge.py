"""The event bus: committed events reach NATS JetStream (a real ``nats-server``) in order, once.

The consumers here are nats-py's durable pull consumers, one of them the example in
``docs/examples/audit_consumer.py`` run as its own process. The drills stop NATS for 10 s
while events are committed, and kill -9 the Jupyter server while it publishes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from nats.js.api import AckPolicy, ConsumerConfig

from cosmic_horizons_lab.protocol import events as envelope
from cosmic_horizons_lab.server.bridge.nats import NatsBridge
from cosmic_horizons_lab.server.store.database import Store

from .services import LabServer, NatsServer, kill_job_groups, write_script

REPO = Path(__file__).resolve().parent.parent
AUDIT = REPO / "docs" / "examples" / "audit_consumer.py"
QUICK = "from cosmic_horizons_lab.executor import report\nreport(progress=0.5, visibilities_processed=7)\n"
TERMINAL = ("job.completed", "job.failed", "job.cancelled")
#: what a trivial job's life looks like in the event log
JOB_LIFE = ("job.submitted", "job.queuing", "job.running", "job.progress", "job.progress", "job.completed")
ENVELOPE = Draft202012Validator(envelope.ENVELOPE_SCHEMA, format_checker=FormatChecker())


@pytest.fixture
def nats_server():
    server = NatsServer().start()
    yield server
    server.close()


async def open_store(tmp_path: Path) -> Store:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await store.open()
    return store


def bridged(store: Store, url: str, **kw: Any) -> NatsBridge:
    """A bridge woken by the store's commits, as the app wires it."""
    bridge = NatsBridge(store, url=url, stream="T", retry_max=0.5, **kw)
    store.publish = lambda _events: bridge.wake()
    return bridge


async def emit(store: Store, user: str, job_id: str | None, *types: str, payload: Any = None) -> None:
    """Commit events through the store's own write path (a job stand-in: id and correlation id)."""
    job = SimpleNamespace(id=job_id, correlation_id=f"corr-{job_id}") if job_id else None
    async with store.write() as tx:
        for t in types:
            tx.emit(t, user=user, job=job, payload=payload if payload is not None else {"n": 1})  # type: ignore[arg-type]


async def until(check, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = await check() if asyncio.iscoroutinefunction(check) else check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(step)


async def drain(url: str, subject: str, expect: int, timeout: float = 20.0, stream: str = "T") -> list[Any]:
    """Everything on ``subject`` through a durable pull consumer, acked: the messages, in stream order."""
    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().pull_subscribe(subject, durable="t" + str(abs(hash(subject)) % 10**6),
                                                  stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(min(256, expect - len(got)), timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
            got.extend(msgs)
        return got
    finally:
        await nc.close()


async def stream_count(url: str, subject: str, stream: str = "T") -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


def stop_process(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def check_per_job_order(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        by_job[ev["job_id"]].append(ev)
    for job_id, evs in by_job.items():
        ids = [e["id"] for e in evs]
        assert ids == sorted(ids), f"job {job_id}'s events out of order: {ids}"
    return by_job


# -- through a real server: subject, headers, body --------------------------------------------------
@pytest.fixture
def lab_config(nats_server):
    return {"event_bus_url": nats_server.url, "event_bus_stream": "T"}


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_events_reach_a_durable_consumer_in_order(api, lab, script, nats_server):
    path = script(QUICK)
    jobs = []
    for user in ("astro", "ann.lee *>"):  # the second needs its subject token escaped
        for _ in range(2):
            _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}}, user=user)
            jobs.append((user, job["id"]))
    stored: list[dict[str, Any]] = []
    for user, job_id in jobs:
        await api.wait_for(job_id, user=user)
        _, replay, _ = await api.get(f"jobs/{job_id}/events", user=user)
        stored += replay["events"]
    await until(lambda: lab.event_bridge.cursor.position >= max(e["id"] for e in stored), 10, "the bridge")

    msgs = await drain(nats_server.url, "cosmic.events.>", len(stored))
    bodies = [json.loads(m.data) for m in msgs]
    assert sorted(bodies, key=lambda e: e["id"]) == sorted(stored, key=lambda e: e["id"]), \
        "the stream holds exactly the committed events, as the REST replay shows them"
    for msg, body in zip(msgs, bodies):
        assert not list(ENVELOPE.iter_errors(body))
        assert msg.headers["Nats-Msg-Id"] == str(body["id"])
        assert msg.headers[envelope.SCHEMA_HEADER] == envelope.ENVELOPE_ID
        assert msg.headers[envelope.TYPE_HEADER] == body["type"]
        user_token, job_token = msg.subject.split(".")[2:]
        assert envelope.unquote_token(user_token) == body["user"] and job_token == body["job_id"]
    assert {m.subject.split(".")[2] for m in msgs} == {"astro", "ann%2Elee%20%2A%3E"}
    by_job = check_per_job_order(bodies)
    for evs in by_job.values():
        assert evs[0]["type"] == "job.submitted" and evs[-1]["type"] == "job.completed"

    _, health, _ = await api.get("health")
    assert health["event_bus"]["connected"] and health["event_bus"]["lag"] == 0
    assert health["event_bus"]["dead_letters"] == 0


# -- dead letters ---------------------------------------------------------------------------------
async def test_schema_invalid_and_refused_events_go_to_the_dead_letter_subject(tmp_path, nats_server):
    store = await open_store(tmp_path)
    # An operator's stream that refuses messages over 1 KiB: a JetStream error no retry fixes.
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(name="T", subjects=["cosmic.events.>", "cosmic.deadletter.>"], max_msg_size=1024)
    await nc.close()
    bridge = bridged(store, nats_server.url)
    await bridge.start()
    try:
        await emit(store, "astro", "j1", "job.submitted")
        await emit(store, "astro", "j1", "Job Progress!")  # not an event type: schema-invalid
        await emit(store, "astro", "j1", "job.progress", payload={"blob": "x" * 4000})  # over the stream's limit
        await emit(store, "astro", "j1", "job.completed")
        await until(lambda: bridge.cursor.position == 4, 10, "the cursor to move past the rejected events")
    finally:
        await bridge.stop()
    good = await drain(nats_server.url, "cosmic.events.>", 2)
    assert [json.loads(m.data)["type"] for m in good] == ["job.submitted", "job.completed"]
    dead = await drain(nats_server.url, "cosmic.deadletter.>", 2)
    assert [m.subject for m in dead] == ["cosmic.deadletter.astro.j1"] * 2
    first, second = (json.loads(m.data) for m in dead)
    assert first["event"]["id"] == 2 and first["event"]["type"] == "Job Progress!"
    assert "type" in first["reason"] and envelope.ENVELOPE_ID in first["reason"]
    assert dead[0].headers[envelope.REASON_HEADER] == first["reason"]
    # the server's own words for the refusal, and the event without its payload (it did not fit)
    assert second["event"]["id"] == 3 and "maximum" in second["reason"].lower()
    assert second["event"]["payload"] is None and second["payload_bytes"] > 4000
    assert bridge.dead_letters == 2
    assert await store.last_event_id() == 4
    await store.close()


# -- the outage drill ------------------------------------------------------------------------------
async def test_nats_outage_drill_loses_nothing_and_recovers_fast(nats_server, tmp_path):
    """1,000 jobs' events (six each, committed through the store's write path as the job service
    would, jobs interleaved); NATS stops 3 s in and comes back 10 s later."""
    store = await open_store(tmp_path)
    bridge = bridged(store, nats_server.url)
    await bridge.start()
    await until(lambda: bridge.connected, 10, "the bridge to connect")
    audit_log = tmp_path / "audit.jsonl"
    consumer = subprocess.Popen([sys.executable, str(AUDIT), "--url", nats_server.url, "--stream", "T",
                                 "--log", str(audit_log)], stdout=open(tmp_path / "consumer.out", "wb"),
                                stderr=subprocess.STDOUT)
    jobs = [f"job{n:04d}" for n in range(1000)]
    users = ("astro", "bob")
    try:
        async def writer() -> None:
            # 20 jobs at a time, one step of all 20 per transaction: 6,000 events over ~16 s
            for start in range(0, len(jobs), 20):
                group = jobs[start:start + 20]
                for step in JOB_LIFE:
                    async with store.write() as tx:
                        for i, job_id in enumerate(group):
                            job = SimpleNamespace(id=job_id, correlation_id=f"corr-{job_id}")
                            tx.emit(step, user=users[i % 2], job=job, payload={"step": step})  # type: ignore[arg-type]
                    await asyncio.sleep(0.05)

        writing = asyncio.create_task(writer())
        await asyncio.sleep(3)
        assert bridge.published > 0, "events flow before the outage"
        nats_server.stop()
        await asyncio.sleep(10)
        during = bridge.cursor.position
        nats_server.start()
        back = time.monotonic()
        await until(lambda: bridge.cursor.position > during, 5, "the backlog to flow within 5 s of NATS's return",
                    step=0.01)
        recovered_in = time.monotonic() - back
        await writing
        total = await store.last_event_id()
        assert total == len(jobs) * len(JOB_LIFE)
        await until(lambda: bridge.cursor.position == total, 60, "the bridge to catch up")

        def audited() -> list[dict[str, Any]]:
            return [json.loads(line) for line in audit_log.read_text().splitlines()] if audit_log.exists() else []

        await until(lambda: len(audited()) >= total, 60, "the consumer to receive everything", step=0.2)
        await asyncio.sleep(0.5)  # anything more would be a duplicate
        lines = audited()
    finally:
        await bridge.stop()
        await store.close()
        stop_process(consumer)

    events = [line["event"] for line in lines]
    assert len(events) == total and {e["id"] for e in events} == set(range(1, total + 1)), "every event exactly once"
    by_job = check_per_job_order(events)
    assert set(by_job) == set(jobs)
    assert all(tuple(e["type"] for e in evs) == JOB_LIFE for evs in by_job.values())
    assert all(line["subject"] == envelope.event_subject(line["event"]) for line in lines)
    # the stream itself holds no duplicate: the republished backlog was deduplicated by Nats-Msg-Id
    assert await stream_count(nats_server.url, "cosmic.events.>") == total
    print(f"outage drill: {total} events, backlog flowing {recovered_in:.2f} s after NATS returned")


# -- kill -9 of the Jupyter server while it publishes ------------------------------------------------
def test_kill_9_of_the_server_while_it_publishes_loses_nothing(tmp_path, nats_server):
    root = tmp_path / "root"
    root.mkdir()
    write_script(root, "quick.py", QUICK)
    write_script(root, "blocker.py", "import time\ntime.sleep(600)\n")
    config = {"event_bus_url": nats_server.url, "event_bus_stream": "T", "local_slots": 1}
    server = LabServer(root, config=config).start()
    audit_log = tmp_path / "audit.jsonl"
    consumer = None
    headers = {"Authorization": f"token {server.token}", "Content-Type": "application/json"}

    def submit(path: str) -> None:
        req = urllib.request.Request(server.url + "cosmic-horizons/api/jobs/submit", method="POST", headers=headers,
                                     data=json.dumps({"agent": "Script", "params": {"path": path}}).encode())
        urllib.request.urlopen(req, timeout=10).read()

    def seen() -> int:
        return len(audit_log.read_text().splitlines()) if audit_log.exists() else 0

    try:
        submit("blocker.py")  # holds the one slot, so what follows is a stream of submissions
        deadline = time.monotonic() + 20
        while server.client().health().get("event_bus", {}).get("connected") is not True:
            assert time.monotonic() < deadline, "the bridge did not connect"
            time.sleep(0.1)
        consumer = subprocess.Popen([sys.executable, str(AUDIT), "--url", nats_server.url, "--stream", "T",
                                     "--log", str(audit_log)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def keep_submitting() -> None:
            while not stop.is_set():
                try:
                    submit("quick.py")
                except Exception:  # the server is dead: the drill's point
                    return

        threads = [threading.Thread(target=keep_submitting) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while seen() < 100:
            assert time.monotonic() < deadline, "no events reached the consumer"
            time.sleep(0.02)
        server.kill()  # SIGKILL while submissions commit and the bridge publishes
        stop.set()
        for t in threads:
            t.join(15)
        server.start()
        deadline = time.monotonic() + 30
        while server.client().health()["event_bus"]["lag"] != 0:
            assert time.monotonic() < deadline, "the restarted server did not catch up"
            time.sleep(0.1)
        with sqlite3.connect(server.state / "jobs.db") as db:
            stored = {row[0]: row[1] for row in db.execute("select id, job_id from events")}
        deadline = time.monotonic() + 30
        while seen() < len(stored):
            assert time.monotonic() < deadline, f"the consumer has {seen()} of {len(stored)} events"
            time.sleep(0.1)
        time.sleep(0.5)
        events = [json.loads(line)["event"] for line in audit_log.read_text().splitlines()]
    finally:
        if consumer is not None:
            stop_process(consumer)
        server.kill()  # nothing left to wait for (a clean stop takes 15 s)
        kill_job_groups(root / "jobs")
    assert len(stored) > 100
    assert sorted(e["id"] for e in events) == sorted(stored), "every committed event, exactly once"
    check_per_job_order(events)
    assert os.path.getsize(audit_log) > 0


# -- gaps in the ids (PostgreSQL's sequences) ---------------------------------------------------------
async def test_a_gap_in_the_ids_is_waited_for_then_passed(tmp_path):
    """An id committed late (another server's transaction) is not skipped; a hole is passed after the grace."""
    from cosmic_horizons_lab.protocol.clock import utcnow
    from cosmic_horizons_lab.server.bridge.cursor import Cursor
    from cosmic_horizons_lab.server.store.orm import Event

    store = await open_store(tmp_path)

    async def put(*ids: int) -> None:
        async with store.write() as tx:
            for i in ids:
                tx.session.add(Event(id=i, type="job.progress", job_id="j", user="u", ts=utcnow(), payload={}))

    try:
        cursor = Cursor(store, "test", gap_grace=0.5)
        await put(1, 2, 4)
        assert [e["id"] for e in await cursor.read(10)] == [1, 2]
        cursor.advance(2)
        assert await cursor.read(10) == [] and 0 < cursor.gap_due() <= 0.5
        await put(3)  # the late commit arrives within the grace
        assert [e["id"] for e in await cursor.read(10)] == [3, 4]
        cursor.advance(4)
        await put(7)  # 5 and 6 never come (rolled back)
        assert await cursor.read(10) == []
        await asyncio.sleep(0.55)
        assert [e["id"] for e in await cursor.read(10)] == [7]
    finally:
        await store.close()
