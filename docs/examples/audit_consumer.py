"""An audit log of every Cosmic Horizons event, kept by a service outside Jupyter.

A durable pull consumer on the JetStream stream the server's bridge publishes to: it appends
each event to a JSON-lines file, skips an id it has already written (so a redelivery after a
crash of this script between its write and its ack does not double a line), and acks only once
the line is on disk. Stop it and start it again: the durable consumer remembers where it was.

    pip install nats-py==2.16.0
    python audit_consumer.py --url nats://127.0.0.1:4222 --log audit.jsonl

Each line: ``{"received_at": <unix time>, "subject": ..., "event": {...the event...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


def seen_ids(log: Path) -> set[int]:
    """The event ids already in the audit log (this script's dedupe memory, rebuilt at start)."""
    if not log.exists():
        return set()
    ids = set()
    for line in log.read_text().splitlines():
        try:
            ids.add(json.loads(line)["event"]["id"])
        except (ValueError, KeyError):
            continue  # a line cut short by a crash: its event is redelivered, as it was not acked
    return ids


async def main(args: argparse.Namespace) -> None:
    log = Path(args.log)
    seen = seen_ids(log)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)

    nc = await nats.connect(args.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        args.subject, durable=args.durable, stream=args.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=30),
    )
    with log.open("a") as out:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(args.batch, timeout=1)
            except NatsTimeout:
                continue  # nothing new (or NATS is away: the client reconnects by itself)
            except Exception as exc:
                print(f"fetch failed, trying again: {exc!r}", flush=True)
                await asyncio.sleep(0.5)
                continue
            fresh = []
            for msg in msgs:
                event = json.loads(msg.data)
                if event["id"] not in seen:
                    seen.add(event["id"])
                    fresh.append(json.dumps({"received_at": time.time(), "subject": msg.subject, "event": event}))
            if fresh:
                out.write("\n".join(fresh) + "\n")
                out.flush()
                os.fsync(out.fileno())  # on disk before the ack: an acked event is never lost here
            for msg in msgs:
                try:
                    await msg.ack()
                except Exception:  # unacked: redelivered after ack_wait, and skipped as seen
                    pass
    await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="COSMIC_EVENTS")
    parser.add_argument("--subject", default="cosmic.events.>", help="e.g. cosmic.events.alice.> for one user")
    parser.add_argument("--durable", default="audit")
    parser.add_argument("--log", default="audit.jsonl")
    parser.add_argument("--batch", type=int, default=256)
    asyncio.run(main(parser.parse_args()))
