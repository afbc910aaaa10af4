"""Benchmark of the event bus bridge: events/s into JetStream, and latency from commit to consumer.

Against a real ``nats-server`` (Debian's, JetStream on, file storage) and the store on SQLite, with
the bridge wired as the app wires it (each commit wakes it). Latency is measured by
a consumer in its own process (:data:`LATENCY_CONSUMER`: a JetStream push subscription that
stamps each message as it arrives), as its receipt time minus the event's ``ts`` (the commit
time), on the same clock. (``docs/examples/audit_consumer.py`` batches its pull requests for an
audit log's throughput, so its receipt times say more about its batching than about the bus.)

- backlog: N events committed while the bridge is off (1,000 jobs' worth, interleaved), then
  the bridge starts: events/s until the stream has acknowledged the last one;
- live burst: N events committed as fast as the store takes them (100 per transaction) while
  the bridge runs: events/s from the first commit to the last acknowledgement (the store's
  commit rate bounds it), and how long after the last commit its acknowledgement came;
- latency: events committed at a steady rate (one job step per transaction), p50/p99 from the
  commit to the consumer's receipt.

    python benchmarks/bench_bridge.py [--events 20000] [--rate 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cosmic_horizons_lab.server.bridge.nats import NatsBridge  # noqa: E402
from cosmic_horizons_lab.server.store.database import Store  # noqa: E402
from tests.services import NatsServer  # noqa: E402

#: Prints one line per event as it arrives: id, commit time (ts) and receipt time.
LATENCY_CONSUMER = """
import asyncio, json, sys, time, nats
async def main(url, stream, subject, out):
    nc = await nats.connect(url)
    f = open(out, "w")
    async def on(msg):
        now = time.time()
        ev = json.loads(msg.data)
        f.write(json.dumps([ev["id"], ev["ts"], now]) + "\\n")
        f.flush()
    await nc.jetstream().subscribe(subject, stream=stream, cb=on, ordered_consumer=True)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main(*sys.argv[1:]))
"""
STEPS = ("job.submitted", "job.queuing", "job.running", "job.progress", "job.progress", "job.completed")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def job(n: int) -> SimpleNamespace:
    return SimpleNamespace(id=f"job{n:05d}", correlation_id=f"corr{n}")


async def commit(store: Store, events: list[tuple[str, int]]) -> None:
    async with store.write() as tx:
        for type_, n in events:
            tx.emit(type_, user=("astro", "bob")[n % 2], job=job(n), payload={"progress": 0.5, "n": n})  # type: ignore[arg-type]


def interleaved(count: int, jobs: int = 1000) -> list[tuple[str, int]]:
    """``count`` events of ``jobs`` jobs, each job's steps in order, the jobs interleaved."""
    return [(STEPS[(i // jobs) % len(STEPS)], i % jobs) for i in range(count)]


async def until(check, timeout: float) -> float:
    t0 = time.perf_counter()
    while not check():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the bridge did not catch up")
        await asyncio.sleep(0.002)
    return time.perf_counter()


async def run(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="chl-bench-bus-"))
    nats_server = NatsServer().start()
    store = Store(f"sqlite+aiosqlite:///{tmp / 'jobs.db'}")
    await store.open()
    bridge = NatsBridge(store, url=nats_server.url, stream="BENCH", batch_size=args.batch)
    store.publish = lambda _events: bridge.wake()
    rows = []
    consumer = None
    try:
        # -- backlog: committed while the bridge was off --------------------------------------
        plan = interleaved(args.events)
        for i in range(0, len(plan), 500):
            await commit(store, plan[i:i + 500])
        t0 = time.perf_counter()
        await bridge.start()
        t1 = await until(lambda: bridge.cursor.position >= args.events, 300)
        rows.append(("backlog drain (bridge started on N committed events)", f"{args.events / (t1 - t0):,.0f} ev/s",
                     "≥ 1,000 (goal 5,000)"))

        # -- live burst: commits and publishing at once ----------------------------------------
        start_id = bridge.cursor.position
        t0 = time.perf_counter()
        plan = interleaved(args.events)
        for i in range(0, len(plan), 100):
            await commit(store, plan[i:i + 100])
        t_committed = time.perf_counter()
        t1 = await until(lambda: bridge.cursor.position >= start_id + args.events, 300)
        # the store's commit rate bounds this one: the row says whether the bridge keeps up with it
        rows.append(("live burst: events committed (100 per commit) and published", f"{args.events / (t1 - t0):,.0f} ev/s",
                     "≥ 1,000"))
        rows.append(("  the last one acknowledged after its commit", f"{(t1 - t_committed) * 1000:,.0f} ms", ""))

        # -- latency: a steady rate, a consumer in its own process -----------------------------
        log = tmp / "received.jsonl"
        consumer = subprocess.Popen([sys.executable, "-c", LATENCY_CONSUMER, nats_server.url, "BENCH",
                                     "cosmic.events.lat.>", str(log)], stdout=subprocess.PIPE)
        assert consumer.stdout is not None and consumer.stdout.readline().strip() == b"ready"
        n_events = int(args.rate * args.seconds)
        t0 = time.perf_counter()
        for i in range(n_events):
            n = i % 200
            async with store.write() as tx:
                tx.emit(STEPS[(i // 200) % len(STEPS)], user="lat", job=SimpleNamespace(id=f"job{n}", correlation_id="c"),  # type: ignore[arg-type]
                        payload={"i": i})
            delay = t0 + (i + 1) / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        deadline = time.monotonic() + 60
        while (sum(1 for _ in log.open()) if log.exists() else 0) < n_events:
            assert time.monotonic() < deadline, "the consumer did not receive every event"
            await asyncio.sleep(0.1)
        lat, ids = [], []
        for line in log.read_text().splitlines():
            event_id, ts, received_at = json.loads(line)
            ids.append(event_id)
            lat.append((received_at - datetime.fromisoformat(ts).timestamp()) * 1000)
        rows.append((f"commit → consumer p50 ({args.rate:g} ev/s, one per commit)", f"{pct(lat, 50):.1f} ms", ""))
        rows.append((f"commit → consumer p99 ({args.rate:g} ev/s, one per commit)", f"{pct(lat, 99):.1f} ms", "≤ 50 ms"))
        assert len(set(ids)) == len(ids) == n_events, "each event once"
        rows.append(("events received by the consumer, each once", f"{len(set(ids)):,} / {n_events:,}", ""))
    finally:
        if consumer is not None:
            consumer.terminate()
            consumer.wait(10)
        await bridge.stop()
        await store.close()
        nats_server.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500, help="the bridge's batch size (event_bus_batch_size)")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s of the latency phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    rows = asyncio.run(run(parser.parse_args()))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  {'result':>16}  target")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:>16}  {target}")


if __name__ == "__main__":
    main()
