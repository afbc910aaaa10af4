"""Benchmark of the server extension on the embedded defaults (SQLite, local backend).

Every scenario runs against a real ``jupyter server`` process (``tests.services.LabServer``);
the benchmark's HTTP and WebSocket clients run in this, a second, process. Scenarios:

- ``users`` (the default, "the shape users meet"): the server on its own defaults (its default
  slots and poll interval); 100 WebSocket clients follow every event from the start; 8
  submitters send 1,000 trivial Script jobs while those jobs start and run. Measures
  submissions/s, delivery p99 (a transition's commit, the event's ``ts``, to its receipt by
  each client), ``GET jobs/{id}/status`` latency during the run, how many jobs are COMPLETED
  within 200 s of the first submission, and that every client got every event exactly once.
- ``users500``: the same with 500 WebSocket clients.
- ``restart``: 500 clients follow while jobs run; the server is killed (SIGKILL) and started
  again on the same port and database; each client reconnects with ``after=`` its last seen
  event id. Measures the time from the new server's first answer until every client has
  reconnected and received every event the store held by then, and that no client lost or
  got twice any event across the restart.
- ``busy`` (the earlier shape): every one of 4 slots holds a long job while the burst
  arrives (the queue fills); then 100 clients connect with ``after=0``, the long jobs are
  cancelled and the queue drains while the clients watch.

The clients are lean, so that this process takes as little as it can of the two cores it
shares with the server: submitters and the status poller keep one HTTP/1.1 connection each
(keep-alive, the login cookie sent back, as a browser does; ``Connection``), and the
WebSocket clients parse frames as they arrive (``WebSocketReader``), on uvloop's event loop
where it is installed (``run_clients``). Each request is still a full request to the real
server: parsed, token-authenticated, answered.

    python benchmarks/bench_api.py [--scenarios users,users500,restart,busy] [--jobs 1000]

One table: each figure with the load average (``os.getloadavg()``) when it was taken.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import compileall
import hashlib
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient

try:  # the clients' event loop where it is installed (run_clients)
    import uvloop
except ImportError:
    uvloop = None

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.services import LabServer, kill_job_groups, write_script  # noqa: E402

TRIVIAL = "from cosmic_horizons_lab.executor import report\nreport(progress=1.0, visibilities_processed=1)\n"
BLOCKER = "import time\ntime.sleep(600)\n"
SHORT = "import time\ntime.sleep(1.5)\n"
TERMINAL_EVENTS = ('"job.completed"', '"job.failed"', '"job.cancelled"')


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def client_loop() -> str:
    return f"uvloop {uvloop.__version__}" if uvloop is not None else "asyncio"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(pid: int) -> float:
    """A process's CPU time (user + system), from /proc: steadier than rates on a shared host."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Lab:
    """One server under test and the clients' plumbing to it."""

    def __init__(self, config: dict[str, Any], *, defaults: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chl-bench-")) / "root"
        self.root.mkdir(parents=True)
        for name, code in (("trivial.py", TRIVIAL), ("blocker.py", BLOCKER), ("short.py", SHORT)):
            write_script(self.root, name, code)
        self.server = LabServer(self.root, config=config)
        if defaults:  # the server's own poll interval, not the test harness's faster one
            self.server.config.pop("poll_interval", None)
        self.base = self.server.url + "cosmic-horizons/api/"
        self.headers = {"Authorization": f"token {self.server.token}"}
        #: the cookies the server set (its login cookie), sent back by every keep-alive connection
        self.cookies: dict[str, str] = {}
        AsyncHTTPClient.configure(None, max_clients=64)
        self.http = AsyncHTTPClient()

    @property
    def db(self) -> Path:
        return self.server.state / "jobs.db"

    def start(self) -> Lab:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        kill_job_groups(self.root / "jobs")

    async def get(self, path: str) -> Any:
        return json.loads((await self.http.fetch(self.base + path, headers=self.headers)).body)

    async def submit(self, script: str, priority: int = 0) -> str:
        resp = await self.http.fetch(self.base + "jobs/submit", method="POST", headers=self.headers,
                                     body=json.dumps({"agent": "Script", "params": {"path": script}, "priority": priority}))
        return json.loads(resp.body)["id"]

    def store_event_ids(self, after: int) -> list[int]:
        """Every event id the store holds after ``after``, read from the database file itself."""
        with sqlite3.connect(self.db) as conn:
            return [r[0] for r in conn.execute("SELECT id FROM events WHERE id > ? ORDER BY id", (after,))]


class Connection:
    """One persistent HTTP/1.1 connection (keep-alive), as a browser or ``requests.Session`` keeps.

    Tornado's ``AsyncHTTPClient`` opens a new TCP connection per request (a name lookup in a
    thread, a connect, a new server-side connection object): most of this process's CPU per
    submission, and a connect plus teardown on the server's side too, on the cores the server
    shares with it. This speaks plain HTTP/1.1 over one socket, request after request; the
    server still parses, authenticates (the token header) and answers each one in full. Like a
    browser, it sends back the login cookie the server set (``Lab.cookies``, shared by every
    connection): without it Jupyter makes up an anonymous user and signs a new cookie for it
    on every request.
    """

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.lab.server.port)
        cookies = "; ".join(f"{k}={v}" for k, v in self.lab.cookies.items())
        head = (f"{method} /cosmic-horizons/api/{path} HTTP/1.1\r\nHost: 127.0.0.1:{self.lab.server.port}\r\n"
                f"Authorization: token {self.lab.server.token}\r\nContent-Type: application/json\r\n"
                + (f"Cookie: {cookies}\r\n" if cookies else "") + f"Content-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        assert self.reader is not None
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"set-cookie":
                cookie, _, _ = value.decode().strip().partition(";")
                key, _, val = cookie.partition("=")
                self.lab.cookies[key.strip()] = val.strip()
        data = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def submit_burst(lab: Lab, submission: dict[str, Any], n: int, clients: int) -> list[str]:
    """POST ``jobs/submit`` ``n`` times from ``clients`` concurrent keep-alive connections; the ids."""
    body = json.dumps(submission).encode()
    left, ids = list(range(n)), []

    async def one_client() -> None:
        conn = Connection(lab)
        try:
            while left:
                left.pop()
                status, data = await conn.request("POST", "jobs/submit", body)
                if status != 201:
                    raise RuntimeError(f"submission answered {status}: {data[:200]!r}")
                ids.append(json.loads(data)["id"])
        finally:
            conn.close()

    await asyncio.gather(*[one_client() for _ in range(clients)])
    return ids


class WebSocketReader(asyncio.Protocol):
    """A WebSocket client connection (RFC 6455) reading text messages into a callback.

    Tornado's client reads each frame through a chain of coroutines and futures: with 100 to
    500 of them in this one process, which shares the two cores with the server it measures,
    that was much of what the delivery figures timed. This does the same handshake (the
    server's ``Sec-WebSocket-Accept`` is checked) and parses the server's frames as they
    arrive, in ``data_received``: a message costs a slice and a callback. It answers a ping
    with a pong and a close with a close, and sends nothing else, as the stream's clients do.
    """

    def __init__(self, on_message: Any) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.fragments: list[bytes] = []
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.opened.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[:end + 4]
            accept = base64.b64encode(hashlib.sha1((self.key + WS_GUID).encode()).digest()).decode()
            fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            if head[0].split(" ")[1:2] != ["101"] or fields.get("sec-websocket-accept") != accept:
                self.opened.set_exception(ConnectionError(f"no WebSocket upgrade: {head[0]}"))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.opened.set_result(None)
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, at = b1 & 0x7F, pos + 2
            if length == 126:
                if n - at < 2:
                    break
                length, at = int.from_bytes(buf[at:at + 2], "big"), at + 2
            elif length == 127:
                if n - at < 8:
                    break
                length, at = int.from_bytes(buf[at:at + 8], "big"), at + 8
            if b1 & 0x80 or n - at < length:  # a server's frames are never masked
                if b1 & 0x80:
                    raise ConnectionError("masked frame from the server")
                break
            payload, pos = bytes(buf[at:at + length]), at + length
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):  # continuation, text, binary
                self.fragments.append(payload)
                if b0 & 0x80:
                    text = b"".join(self.fragments).decode()
                    self.fragments = []
                    self.on_message(text)
            elif opcode == 8:  # close: answer it, then the server closes the TCP connection
                self._send(0x88, payload[:2])
                self.transport.close()  # type: ignore[union-attr]
            elif opcode == 9:  # ping
                self._send(0x8A, payload)
        del buf[:pos]

    def _send(self, first: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([first, 0x80 | len(payload)]) + mask + masked)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the upgrade"))
        if not self.done:
            self.done = True
            self.on_message(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send(0x88, (1000).to_bytes(2, "big"))
            self.transport.close()


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def ws_open(lab: Lab, after: int, on_message: Any) -> WebSocketReader:
    """Connect to ``events?after=`` with the token header and the lab's cookies; the open reader."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(lambda: WebSocketReader(on_message), "127.0.0.1", lab.server.port)
    cookies = "; ".join(f"{k}={v}" for k, v in lab.cookies.items())
    transport.write((f"GET /cosmic-horizons/api/events?after={after} HTTP/1.1\r\nHost: 127.0.0.1:{lab.server.port}\r\n"
                     f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {proto.key}\r\n"
                     f"Sec-WebSocket-Version: 13\r\nAuthorization: token {lab.server.token}\r\n"
                     + (f"Cookie: {cookies}\r\n" if cookies else "") + "\r\n").encode())
    try:
        await proto.opened
    except BaseException:
        transport.close()
        raise
    return proto


class Viewer:
    """One WebSocket client: stamps and keeps each message; decodes only after the run.

    Decoding every copy as it arrives would make this process, not the server, what the
    latency measures. It reconnects with ``after=`` its last seen id when the server goes.
    """

    def __init__(self, lab: Lab, after: int) -> None:
        self.lab = lab
        self.first_after = after
        # two flat lists, not a list of (time, text) tuples: strings and floats are not tracked
        # by the garbage collector, and a million tracked tuples (500 clients) made this
        # process's full collections pause its reading for tens of milliseconds, which the
        # delivery figures then counted as the server's
        self.times: list[float] = []
        self.msgs: list[str] = []
        self.last_id = after
        self.connects: list[float] = []
        self.ws: Any = None
        self.task: asyncio.Task | None = None
        self.stopped = False

    async def connect(self) -> None:
        self.closed = asyncio.Event()
        # a callback per message, not a read_message() coroutine: no future and no queue per
        # message in this process, which shares the two cores with the server it measures
        self.ws = await ws_open(self.lab, self.last_id, self._on_message)
        self.connects.append(time.time())

    def _on_message(self, msg: str | bytes | None) -> None:
        if msg is None:  # the connection closed
            self.closed.set()
            return
        self.times.append(time.time())
        self.msgs.append(msg)  # type: ignore[arg-type]
        # the last id is the message's last '"id":N' at the top of an event: events end
        # with their payload, and the id comes first in each event's JSON
        self.last_id = _last_id(msg)  # type: ignore[arg-type]

    def start(self, reconnect: bool = False) -> None:
        self.task = asyncio.ensure_future(self._run(reconnect))

    async def _run(self, reconnect: bool) -> None:
        while not self.stopped:
            if self.ws is None:
                try:
                    await self.connect()
                except OSError:  # the server is not back yet (ConnectionError is an OSError)
                    await asyncio.sleep(0.1 + 0.1 * random.random())
                    continue
            await self.closed.wait()
            self.ws = None
            if not reconnect:
                return

    def events(self) -> list[tuple[float, dict[str, Any]]]:
        out = []
        for now, msg in zip(self.times, self.msgs):
            data = json.loads(msg)
            out.extend((now, ev) for ev in (data if isinstance(data, list) else [data]))
        return out

    def close(self) -> None:
        self.stopped = True
        if self.ws is not None:
            self.ws.close()
        if self.task is not None:
            self.task.cancel()


def _last_id(msg: str) -> int:
    i = msg.rfind('{"id":')
    return int(msg[i + 6:msg.index(",", i)])


async def follow(lab: Lab, n: int, after: int, reconnect: bool = False) -> list[Viewer]:
    viewers = [Viewer(lab, after) for _ in range(n)]
    for i in range(0, n, 50):
        await asyncio.gather(*(v.connect() for v in viewers[i:i + 50]))
    for v in viewers:
        v.start(reconnect)
    return viewers


async def wait_all_have(viewers: list[Viewer], last_id: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not all(v.last_id >= last_id for v in viewers):
        await asyncio.sleep(0.05)


def exactly_once(viewers: list[Viewer], expected: list[int]) -> bool:
    return all([ev["id"] for _, ev in v.events()] == expected for v in viewers)


def delivery(viewers: list[Viewer], live_from: int) -> list[tuple[float, float]]:
    """Each event's delivery to each client, with the event's commit time (to split by phase)."""
    lat = []
    for v in viewers:
        for now, ev in v.events():
            if ev["id"] > live_from:
                ts = datetime.fromisoformat(ev["ts"]).timestamp()
                lat.append((ts, now - ts))
    return lat


def first_and_spread(viewers: list[Viewer], live_from: int) -> tuple[list[float], list[float]]:
    """Per event: its delivery to the first client that read it, and the spread to the last.

    All clients run in this one process, which reads their sockets one after another: the
    spread is mostly this process's own reading of 100 or 500 copies (and the server's
    writing of them), the first client's figure the closest to the server's own delay.
    """
    seen: dict[int, list[float]] = {}
    ts: dict[int, float] = {}
    for v in viewers:
        for now, ev in v.events():
            if ev["id"] > live_from:
                seen.setdefault(ev["id"], []).append(now)
                if ev["id"] not in ts:
                    ts[ev["id"]] = datetime.fromisoformat(ev["ts"]).timestamp()
    first = [min(times) - ts[i] for i, times in seen.items()]
    spread = [max(times) - min(times) for times in seen.values()]
    return first, spread


async def statuses(lab: Lab, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job_id in ids:
        s = (await lab.get(f"jobs/{job_id}/status"))["status"]
        counts[s] = counts.get(s, 0) + 1
    return counts


async def poll_statuses(lab: Lab, ids: list[str], lat: list[float], stop: asyncio.Event) -> None:
    """One user's status polling while the jobs run (a request at a time, ~20 a second, one
    keep-alive connection as a browser's)."""
    conn = Connection(lab)
    try:
        while not stop.is_set():
            if ids:
                t = time.perf_counter()
                status, data = await conn.request("GET", f"jobs/{random.choice(ids)}/status")
                lat.append(time.perf_counter() - t)
                if status != 200:
                    raise RuntimeError(f"GET status answered {status}: {data[:200]!r}")
            await asyncio.sleep(0.05)
    finally:
        conn.close()


# -- scenarios ---------------------------------------------------------------------------------
async def users(args: argparse.Namespace, n_viewers: int) -> list[tuple[str, str, str, str]]:
    """Submissions arriving while jobs start and run on the default slots, every event followed."""
    lab = Lab({}, defaults=True).start()
    try:
        start_id = (await lab.get("events/latest"))["last_event_id"]
        viewers = await follow(lab, n_viewers, start_id)
        health = await lab.get("health")
        slots = health.get("backend", {}).get("slots", "?") if isinstance(health.get("backend"), dict) else "?"
        done: set[str] = set()
        ids: list[str] = []
        status_lat: list[float] = []
        stop = asyncio.Event()
        poller = asyncio.ensure_future(poll_statuses(lab, ids, status_lat, stop))
        server_pid = lab.server.proc.pid
        cpu0 = (cpu_seconds(server_pid), time.process_time())
        t0 = time.perf_counter()
        ids.extend(await submit_burst(lab, {"agent": "Script", "params": {"path": "trivial.py"}},
                                                 args.jobs, args.clients))
        submit_seconds = time.perf_counter() - t0
        wall1 = time.time()
        cpu1 = (cpu_seconds(server_pid), time.process_time())
        load_submit = load()
        wanted = set(ids)
        v0 = viewers[0]
        seen = 0
        done_200 = None
        while time.perf_counter() - t0 < args.timeout:
            for msg in v0.msgs[seen:]:
                if any(t in msg for t in TERMINAL_EVENTS):
                    data = json.loads(msg)
                    for ev in data if isinstance(data, list) else [data]:
                        if ev["type"] == "job.completed" and ev["job_id"] in wanted:
                            done.add(ev["job_id"])
            seen = len(v0.msgs)
            if done_200 is None and time.perf_counter() - t0 >= 200:
                done_200 = len(done)
            if len(done) == len(wanted):
                break
            await asyncio.sleep(0.2)
        all_done = time.perf_counter() - t0
        cpu2 = (cpu_seconds(server_pid), time.process_time())
        load_run = load()
        stop.set()
        await poller
        if done_200 is None:
            done_200 = len(done)
        last = (await lab.get("events/latest"))["last_event_id"]
        await wait_all_have(viewers, last)
        for v in viewers:
            v.close()
        timed = delivery(viewers, start_id)
        lat = [d for _, d in timed]
        lat_burst, lat_after = [d for t, d in timed if t < wall1], [d for t, d in timed if t >= wall1]
        first, spread = first_and_spread(viewers, start_id)
        once = exactly_once(viewers, lab.store_event_ids(start_id))
        counts = await statuses(lab, ids)
        tag = f"users, {n_viewers} clients, {slots} default slots"
        return [
            (tag, f"submissions/s ({len(ids)} jobs, {args.clients} submitters, jobs running)", f"{len(ids) / submit_seconds:.0f}", load_submit),
            (tag, "CPU ms per submission while they arrive: server / these clients",
             f"{1000 * (cpu1[0] - cpu0[0]) / len(ids):.2f} / {1000 * (cpu1[1] - cpu0[1]) / len(ids):.2f}", load_submit),
            (tag, "CPU ms per job, whole run: server / these clients",
             f"{1000 * (cpu2[0] - cpu0[0]) / len(ids):.2f} / {1000 * (cpu2[1] - cpu0[1]) / len(ids):.2f}", load_run),
            (tag, "event delivery p50 / p99", f"{1000 * pct(lat, 50):.1f} / {1000 * pct(lat, 99):.1f} ms", load_run),
            (tag, "event delivery p99 while the submissions arrive / after", f"{1000 * pct(lat_burst, 99):.1f} / {1000 * pct(lat_after, 99):.1f} ms", load_run),
            (tag, "GET status p50 / p99 (during the run)", f"{1000 * pct(status_lat, 50):.1f} / {1000 * pct(status_lat, 99):.1f} ms", load_run),
            (tag, "jobs COMPLETED within 200 s", f"{done_200} / {len(ids)}", load_run),
            (tag, "time until all jobs COMPLETED", f"{all_done:.1f} s ({counts})", load_run),
            (tag, "delivery to the first client p50 / p99; spread first → last client p50 / p99",
             f"{1000 * pct(first, 50):.1f} / {1000 * pct(first, 99):.1f} ms; {1000 * pct(spread, 50):.1f} / {1000 * pct(spread, 99):.1f} ms",
             load_run),
            (tag, "events per client / messages per client / deliveries timed",
             f"{len(v0.events())} / {len(v0.msgs)} / {len(lat)}", load_run),
            (tag, "every client got every event exactly once", str(once), load_run),
        ]
    finally:
        lab.stop()


async def restart(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """500 clients follow; the server dies mid-run and comes back; they reconnect and catch up."""
    n = args.restart_viewers
    lab = Lab({}, defaults=True).start()
    tag = f"restart, {n} clients"
    try:
        start_id = (await lab.get("events/latest"))["last_event_id"]
        viewers = await follow(lab, n, start_id, reconnect=True)
        # events while they follow: jobs that end while the server is down, and trivial ones
        ids = [await lab.submit("short.py") for _ in range(2)]
        ids += await submit_burst(lab, {"agent": "Script", "params": {"path": "trivial.py"}}, 100, 8)
        await asyncio.sleep(1.0)
        lab.server.kill()
        killed = time.time()
        seen_before = min(v.last_id for v in viewers)
        await asyncio.sleep(0.5)  # down a while: the short jobs end meanwhile
        # the same port and database, as a restarted single-user server; the clients keep
        # retrying meanwhile (the start runs in a thread, so this loop is not blocked)
        port = lab.server.port
        await asyncio.to_thread(lab.server.start)
        assert lab.server.port == port
        # the first answer: when start() saw health answer, or a client got in first
        t_up = min([time.time()] + [c for v in viewers for c in v.connects if c > killed])
        target = lab.store_event_ids(start_id)[-1]
        await wait_all_have(viewers, target, timeout=60)
        caught_up = time.time()
        reconnected = max(v.connects[-1] for v in viewers)
        load_restart = load()
        # the rest of the run, then the check against the store across the restart
        deadline = time.time() + args.timeout
        while time.time() < deadline:
            counts = await statuses(lab, ids)
            if counts.get("COMPLETED", 0) + counts.get("FAILED", 0) + counts.get("CANCELLED", 0) == len(ids):
                break
            await asyncio.sleep(1.0)
        last = (await lab.get("events/latest"))["last_event_id"]
        await wait_all_have(viewers, last)
        for v in viewers:
            v.close()
        once = exactly_once(viewers, lab.store_event_ids(start_id))
        return [
            (tag, "server start (SIGKILL → first answer; not the server's work)", f"{t_up - killed:.1f} s", load_restart),
            (tag, "events to catch up (most missed by one client)",
             f"{len([i for i in lab.store_event_ids(seen_before) if i <= target])} of {target - start_id}", load_restart),
            (tag, "first answer → all clients reconnected", f"{max(0.0, reconnected - t_up):.2f} s", load_restart),
            (tag, "first answer → all clients caught up (after=last seen)", f"{caught_up - t_up:.2f} s", load_restart),
            (tag, "no event lost or duplicated across the restart", str(once), load_restart),
        ]
    finally:
        lab.stop()


async def busy(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Every slot holds a long job while the burst arrives; then the queue drains, watched."""
    slots = 4
    lab = Lab({"local_slots": slots, "poll_interval": 0.5}, defaults=False).start()
    tag = f"busy, {slots} slots blocked, {args.viewers} clients"
    try:
        blockers = [await lab.submit("blocker.py", priority=10) for _ in range(slots)]
        for job_id in blockers:
            while (await lab.get(f"jobs/{job_id}/status"))["status"] != "RUNNING":
                await asyncio.sleep(0.1)
        start_id = (await lab.get("events/latest"))["last_event_id"]
        t0 = time.perf_counter()
        ids = await submit_burst(lab, {"agent": "Script", "params": {"path": "trivial.py"}},
                                            args.jobs, args.clients)
        submit_seconds = time.perf_counter() - t0
        load_submit = load()
        viewers = await follow(lab, args.viewers, start_id)  # each replays the burst
        live_from = (await lab.get("events/latest"))["last_event_id"]
        await asyncio.sleep(1.0)
        for job_id in blockers:
            await lab.http.fetch(lab.base + f"jobs/{job_id}", method="DELETE", headers=lab.headers)
        status_lat: list[float] = []
        t_run = time.perf_counter()
        pending = set(ids)
        while pending and time.perf_counter() - t_run < args.timeout:
            for job_id in list(pending)[: args.clients * 4]:
                t = time.perf_counter()
                s = (await lab.get(f"jobs/{job_id}/status"))["status"]
                status_lat.append(time.perf_counter() - t)
                if s in ("COMPLETED", "FAILED", "CANCELLED"):
                    pending.discard(job_id)
            await asyncio.sleep(0.2)
        run_seconds = time.perf_counter() - t_run
        load_run = load()
        counts = await statuses(lab, ids)
        last = (await lab.get("events/latest"))["last_event_id"]
        await wait_all_have(viewers, last)
        for v in viewers:
            v.close()
        lat = [d for _, d in delivery(viewers, live_from)]
        once = exactly_once(viewers, lab.store_event_ids(start_id))
        return [
            (tag, f"submissions/s ({len(ids)} jobs, {args.clients} submitters, slots blocked)", f"{len(ids) / submit_seconds:.0f}", load_submit),
            (tag, "event delivery p50 / p99 (queue draining)", f"{1000 * pct(lat, 50):.1f} / {1000 * pct(lat, 99):.1f} ms", load_run),
            (tag, "GET status p50 / p99", f"{1000 * pct(status_lat, 50):.1f} / {1000 * pct(status_lat, 99):.1f} ms", load_run),
            (tag, "run time of the jobs / statuses", f"{run_seconds:.1f} s {counts}", load_run),
            (tag, "every client got every event exactly once", str(once), load_run),
        ]
    finally:
        lab.stop()


SCENARIOS = {
    "users": lambda a: users(a, a.viewers),
    "users500": lambda a: users(a, 500),
    "restart": restart,
    "busy": busy,
}


def run_clients(main: Any) -> Any:
    """Run the clients on uvloop's event loop where it is installed, else on asyncio's.

    The 500 WebSocket clients all live in this one process, which reads their sockets one
    after another: on asyncio's loop that took ~35 µs of Python per socket and message, so the
    last of 500 copies of an event was read 17 ms (median) after the first, and the 500-client
    delivery figure timed this process more than the server. uvloop reads a socket in C. The
    server under test keeps its own loop (Jupyter's, asyncio's).
    """
    return (uvloop.run if uvloop is not None else asyncio.run)(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="users", help="comma-separated: " + ", ".join(SCENARIOS) + " (or all)")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8, help="concurrent submitters")
    parser.add_argument("--viewers", type=int, default=100, help="WebSocket clients of 'users' and 'busy'")
    parser.add_argument("--restart-viewers", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=400)
    args = parser.parse_args()
    names = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    # Job processes import the package: with its bytecode cached, as an installed package has it
    # (this checkout runs with PYTHONDONTWRITEBYTECODE, which would compile them on every start).
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "cosmic_horizons_lab"), quiet=1)
    rows: list[tuple[str, str, str, str]] = []
    print(f"load before: {load()}; the clients' loop: {client_loop()}", flush=True)
    for name in names:
        got = run_clients(SCENARIOS[name](args))
        rows += got
        for row in got:
            print("  ".join(row), flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("scenario", "measure", "result", "load (1/5/15 min)")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
