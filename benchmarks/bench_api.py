"""Benchmark of the server extension on the embedded defaults (SQLite, local backend).

Measures, in one run against a real ``jupyter server`` process:
- submissions per second through REST (N jobs from 8 concurrent clients) while every slot
  is busy with a long job (so the queue fills, as on a busy machine, and job processes
  starting up do not take the two cores from the submissions);
- then 100 WebSocket clients connect with ``after=0`` (each replays the burst), the long
  jobs are cancelled and the queue drains: delivery latency is measured on the live events,
- p50/p99 latency of ``GET jobs/{id}/status`` while jobs run,
- event delivery latency p50/p99 from a transition's commit (the event's ``ts``)
  to its receipt by each of 100 concurrent WebSocket clients,
- that every job ends COMPLETED and every client received every event exactly once.

    python benchmarks/bench_api.py [--jobs 1000] [--clients 8] [--viewers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.services import LabServer, kill_job_groups, write_script  # noqa: E402

TRIVIAL = "from cosmic_horizons_lab.executor import report\nreport(progress=1.0, visibilities_processed=1)\n"
BLOCKER = "import time\ntime.sleep(600)\n"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="chl-bench-")) / "root"
    root.mkdir(parents=True)
    write_script(root, "trivial.py", TRIVIAL)
    write_script(root, "blocker.py", BLOCKER)
    config = {"local_slots": args.slots, "poll_interval": 0.5}
    if args.nice is not None:
        config["LocalBackend.nice"] = args.nice
    server = LabServer(root, config=config).start()
    base = server.url + "cosmic-horizons/api/"
    headers = {"Authorization": f"token {server.token}"}
    AsyncHTTPClient.configure(None, max_clients=64)
    http = AsyncHTTPClient()
    try:
        # -- a busy machine: every slot holds a long job, so the queue fills while we submit ---
        blockers = []
        for _ in range(args.slots):
            resp = await http.fetch(base + "jobs/submit", method="POST", headers=headers,
                                    body=json.dumps({"agent": "Script", "params": {"path": "blocker.py"}, "priority": 10}))
            blockers.append(json.loads(resp.body)["id"])
        for job_id in blockers:
            while json.loads((await http.fetch(base + f"jobs/{job_id}/status", headers=headers)).body)["status"] != "RUNNING":
                await asyncio.sleep(0.1)

        # -- submissions -------------------------------------------------------------
        t0 = time.perf_counter()
        ids = await server.submit_burst(http, {"agent": "Script", "params": {"path": "trivial.py"}},
                                        args.jobs, args.clients)
        submit_seconds = time.perf_counter() - t0

        # -- viewers: connect after the burst (replaying it), then watch the queue drain live --
        received: list[list[int]] = [[] for _ in range(args.viewers)]
        latencies: list[float] = []
        viewers = []
        for _ in range(args.viewers):
            req = HTTPRequest(server.url.replace("http", "ws") + "cosmic-horizons/api/events?after=0", headers=headers)
            viewers.append(await websocket_connect(req))

        raw: list[list[tuple[float, str]]] = [[] for _ in range(args.viewers)]

        async def listen(i: int, ws) -> None:
            # Only stamp and keep each message here; decoding 100 copies of every event as it
            # arrives would make this process, not the server, what the latency measures.
            while True:
                msg = await ws.read_message()
                if msg is None:
                    return
                raw[i].append((time.time(), msg))
                if '"job.completed"' in msg or '"job.cancelled"' in msg:
                    tail_ids[i] = msg

        tail_ids: list[str] = [""] * args.viewers

        def decode() -> None:
            for i, messages in enumerate(raw):
                for now, msg in messages:
                    data = json.loads(msg)
                    for ev in data if isinstance(data, list) else [data]:
                        received[i].append(ev["id"])
                        if ev["id"] > live_from:
                            latencies.append(now - datetime.fromisoformat(ev["ts"]).timestamp())

        listeners = [asyncio.ensure_future(listen(i, ws)) for i, ws in enumerate(viewers)]

        resp = await http.fetch(base + "events/latest", headers=headers)
        live_from = json.loads(resp.body)["last_event_id"]  # latency counts only events born after this
        await asyncio.sleep(1.0)  # let every viewer finish its replay
        # -- free the slots: the queue drains ---------------------------------------------
        for job_id in blockers:
            await http.fetch(base + f"jobs/{job_id}", method="DELETE", headers=headers)

        # -- status polls while the jobs run -----------------------------------------
        status_lat: list[float] = []
        t_run = time.perf_counter()
        pending = set(ids)
        while pending and time.perf_counter() - t_run < args.timeout:
            for job_id in list(pending)[: args.clients * 4]:
                t = time.perf_counter()
                resp = await http.fetch(base + f"jobs/{job_id}/status", headers=headers)
                status_lat.append(time.perf_counter() - t)
                if json.loads(resp.body)["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                    pending.discard(job_id)
            await asyncio.sleep(0.2)
        run_seconds = time.perf_counter() - t_run

        # -- final check ----------------------------------------------------------------
        statuses: dict[str, int] = {}
        for job_id in ids:
            resp = await http.fetch(base + f"jobs/{job_id}/status", headers=headers)
            s = json.loads(resp.body)["status"]
            statuses[s] = statuses.get(s, 0) + 1
        # (the blockers end CANCELLED; the counted jobs are the submitted ones)
        resp = await http.fetch(base + "events/latest", headers=headers)
        last_id = json.loads(resp.body)["last_event_id"]
        deadline = time.time() + 30
        while time.time() < deadline and not all(f'"id":{last_id},' in (m[-1][1] if m else "") for m in raw):
            await asyncio.sleep(0.2)
        decode()
        for ws in viewers:
            ws.close()
        for task in listeners:
            task.cancel()
        total_events = len(received[0])
        exactly_once = all(r == sorted(set(r)) and len(r) == total_events and r[-1] == last_id for r in received)
        return {
            "jobs": args.jobs,
            "clients": args.clients,
            "viewers": args.viewers,
            "slots": args.slots,
            "submissions_per_second": args.jobs / submit_seconds,
            "status_p50_ms": 1000 * pct(status_lat, 50),
            "status_p99_ms": 1000 * pct(status_lat, 99),
            "delivery_p50_ms": 1000 * pct(latencies, 50),
            "delivery_p99_ms": 1000 * pct(latencies, 99),
            "events_per_viewer": total_events,
            "deliveries": len(latencies),
            "run_seconds": run_seconds,
            "statuses": statuses,
            "every_viewer_got_every_event_once": exactly_once,
        }
    finally:
        server.stop()
        kill_job_groups(root / "jobs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--nice", type=int, default=None, help="LocalBackend.nice (default: the backend's)")
    args = parser.parse_args()
    r = asyncio.run(run(args))
    rows = [
        ("submissions/s (REST, %d jobs, %d clients)" % (r["jobs"], r["clients"]), f"{r['submissions_per_second']:.0f}", "≥ 300"),
        ("status latency p50 / p99", f"{r['status_p50_ms']:.1f} / {r['status_p99_ms']:.1f} ms", ""),
        ("event delivery p50 / p99 (%d WebSocket clients)" % r["viewers"], f"{r['delivery_p50_ms']:.1f} / {r['delivery_p99_ms']:.1f} ms", "p99 < 50 ms"),
        ("events per client / deliveries", f"{r['events_per_viewer']} / {r['deliveries']}", ""),
        ("all jobs COMPLETED", f"{r['statuses']}", f"{r['jobs']} COMPLETED"),
        ("every client got every event exactly once", str(r["every_viewer_got_every_event_once"]), "True"),
        ("run time of the %d jobs (%d slots)" % (r["jobs"], r["slots"]), f"{r['run_seconds']:.1f} s", ""),
    ]
    width = max(len(a) for a, _, _ in rows)
    print(f"{'measure':<{width}}  {'result':<28}  floor")
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:<28}  {c}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
