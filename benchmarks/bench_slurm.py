"""Benchmark of the Slurm backend on the single-node test cluster (scripts/slurm-cluster).

Scenarios (each a function in ``SCENARIOS``; add one there, e.g. through the REST API):

- ``raw``: N ``sbatch --parsable`` calls of the same batch scripts, one after another
  (the baseline: what Slurm itself takes);
- ``backend``: N ``SlurmBackend.submit`` calls, one after another as the orchestrator
  makes them; the ratio to ``raw`` is the backend's overhead;
- ``backend_concurrent``: the same with 8 submissions in flight;
- ``array``: N jobs as one job array (``submit_array``): one sbatch call;
- ``api``: the same N jobs through our REST API (a real ``jupyter server`` with
  ``backend = "slurm"``, 8 concurrent clients): time until all are QUEUING in our API and
  until all are in ``squeue``; the ratio of the latter to ``raw`` is our submission path's cost;
- ``latency``: jobs that really run; for each state change, the delay from when ``squeue``
  first shows it to when a WebSocket client of our API receives the event;
- ``poll_load``: J active jobs polled by an orchestrator loop every ``--poll-interval``
  seconds for ``--duration`` seconds: Slurm commands per minute, for J=50 and J=500
  (must not grow with J) and the time one poll takes.

For each submission scenario: submissions per second and the time from the first
submission until ``squeue`` shows every job. Jobs are submitted held (``--hold``) so
that the machine's two cores measure submission, not the jobs; they are cancelled after.

    scripts/slurm-cluster start && eval "$(scripts/slurm-cluster env)"
    python benchmarks/bench_slurm.py [--jobs 200] [--rounds 3] [--active 50,500] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cosmic_horizons_lab.backends.base import BackendUnavailable, LaunchSpec  # noqa: E402
from cosmic_horizons_lab.backends.slurm import SlurmBackend  # noqa: E402


def make_specs(base: Path, prefix: str, n: int) -> list[LaunchSpec]:
    specs = []
    for i in range(n):
        job_dir = base / f"{prefix}{i}"
        job_dir.mkdir(parents=True)
        (job_dir / "x.py").write_text("pass\n")
        job = {"id": job_dir.name, "agent": "Script", "params": {"path": "x.py"}, "server_root": str(job_dir)}
        (job_dir / "job.json").write_text(json.dumps(job))
        specs.append(
            LaunchSpec(job_id=job_dir.name, job_dir=job_dir, agent="Script", user="bench", gpu_count=0,
                       max_runtime_seconds=600, correlation_id=f"bench-{i}")  # fmt: skip
        )
    return specs


def backend_for(base: Path, **config: Any) -> SlurmBackend:
    config.setdefault("extra_directives", ["--hold"])
    config.setdefault("job_name_template", PREFIX + "{agent}-{job_id}")
    return SlurmBackend(work_dir=base, python=sys.executable, **config)


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--array", "--format=%i"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return {line.strip() for line in out.splitlines() if line.strip()}


async def until_visible(ids: list[str], t0: float, timeout: float = 120.0) -> float:
    """Seconds from t0 until squeue lists every id."""
    want = set(ids)
    while True:
        if want <= squeue_ids():
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{len(want - squeue_ids())} jobs never showed in squeue")
        await asyncio.sleep(0.05)


PREFIX = "chlbench-"


def cancel_all() -> None:
    """scancel this benchmark's jobs (by name: the cluster may be shared)."""
    out = subprocess.run(["squeue", "--noheader", "--format=%A %j"], capture_output=True, text=True).stdout
    ids = [p[0] for p in (line.split() for line in out.splitlines()) if len(p) == 2 and p[1].startswith(PREFIX)]
    if ids:
        subprocess.run(["scancel", *ids], check=False)
        time.sleep(1.0)


async def scenario_raw(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    specs = make_specs(base, "raw", args.jobs)
    renderer = backend_for(base)
    scripts = []
    for spec in specs:
        path = spec.job_dir / "slurm.sbatch"
        path.write_text(renderer.render_script(spec))
        scripts.append(path)
    t0 = time.perf_counter()
    ids = []
    for path in scripts:
        out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=True)
        ids.append(out.stdout.strip().split(";")[0])
    submit_s = time.perf_counter() - t0
    visible_s = await until_visible(ids, t0)
    return {"jobs": len(ids), "submit_s": submit_s, "per_s": len(ids) / submit_s, "all_visible_s": visible_s}


async def _submit_backend(args: argparse.Namespace, base: Path, concurrency: int, name: str) -> dict[str, Any]:
    specs = make_specs(base, name, args.jobs)
    backend = backend_for(base)
    sem = asyncio.Semaphore(concurrency)

    async def one(spec: LaunchSpec) -> str:
        async with sem:
            return await backend.submit(spec)

    t0 = time.perf_counter()
    if concurrency == 1:
        ids = [await backend.submit(s) for s in specs]
    else:
        ids = await asyncio.gather(*(one(s) for s in specs))
    submit_s = time.perf_counter() - t0
    visible_s = await until_visible(list(ids), t0)
    return {"jobs": len(ids), "submit_s": submit_s, "per_s": len(ids) / submit_s, "all_visible_s": visible_s,
            "commands": dict(backend.command_counts)}  # fmt: skip


async def scenario_backend(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    return await _submit_backend(args, base, 1, "seq")


async def scenario_backend_concurrent(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    return await _submit_backend(args, base, 8, "conc")


async def scenario_array(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    specs = make_specs(base, "arr", args.jobs)
    backend = backend_for(base)
    t0 = time.perf_counter()
    ids = await backend.submit_array(specs, parallel_limit=8)
    submit_s = time.perf_counter() - t0
    visible_s = await until_visible(ids, t0)
    return {"jobs": len(ids), "submit_s": submit_s, "per_s": len(ids) / submit_s, "all_visible_s": visible_s,
            "commands": dict(backend.command_counts)}  # fmt: skip


async def scenario_poll_load(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for active in args.active:
        specs = make_specs(base, f"load{active}-", active)
        submitter = backend_for(base)
        # submitted as arrays (fast); each element is one active job to poll
        ids: list[str] = []
        for start in range(0, active, 250):
            ids += await submitter.submit_array(specs[start : start + 250], parallel_limit=None)
        await until_visible(ids, time.perf_counter())
        poller = backend_for(base, min_poll_interval=args.min_poll_interval)
        poll_times = []
        t_end = time.perf_counter() + args.duration
        polls = 0
        outages = 0
        squeue_times: list[float] = []
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            ran = poller.command_counts.get("squeue", 0)
            try:
                states = await poller.poll(ids)
            except BackendUnavailable:
                outages += 1  # the orchestrator would retry after its interval, and so do we
            else:
                poll_times.append(time.perf_counter() - t0)
                if poller.command_counts.get("squeue", 0) > ran:
                    squeue_times.append(time.perf_counter() - t0)
                polls += 1
                assert len(states) == len(ids) and all(s.status == "QUEUING" for s in states.values())
            await asyncio.sleep(args.poll_interval)
        minutes = args.duration / 60.0
        total = sum(poller.command_counts.values())
        poll_times.sort()
        results[str(active)] = {
            "active_jobs": len(ids),
            "polls": polls,
            "polls_during_outages": outages,
            "commands": dict(poller.command_counts),
            "commands_per_min": total / minutes,
            "poll_ms_p50": 1000 * poll_times[len(poll_times) // 2],
            "squeue_poll_ms_p50": 1000 * sorted(squeue_times)[len(squeue_times) // 2],
            "naive_per_job_commands_per_min": len(ids) * 60.0 / args.poll_interval,
            "poll_ms_max": 1000 * poll_times[-1],
        }
        cancel_all()
    return results


def _lab_server(base: Path, args: argparse.Namespace, **extra: Any):
    from tests.services import LabServer, write_script

    root = base / "root"
    root.mkdir(parents=True)
    write_script(root, "x.py", "pass\n")
    write_script(root, "nap.py", "import time\ntime.sleep(2)\n")
    config = {"backend": "slurm", "poll_interval": args.poll_interval,
              "SlurmBackend.min_poll_interval": args.min_poll_interval,
              "SlurmBackend.job_name_template": PREFIX + "{agent}-{job_id}", **extra}
    return LabServer(root, config=config).start()


async def scenario_api(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    from tornado.httpclient import AsyncHTTPClient

    server = _lab_server(base, args, **{"SlurmBackend.extra_directives": "--hold"})
    http = AsyncHTTPClient(max_clients=16)
    api = server.url + "cosmic-horizons/api/"
    headers = {"Authorization": f"token {server.token}"}
    try:
        t0 = time.perf_counter()
        ids = await server.submit_burst(http, {"agent": "Script", "params": {"path": "x.py", "gpu_count": 0}},
                                        args.jobs, 8)
        accepted_s = time.perf_counter() - t0
        backend_ids: dict[str, str] = {}
        while len(backend_ids) < len(ids):
            page = await http.fetch(api + "jobs/search?status=QUEUING,RUNNING&page_size=200&page=1", headers=headers)
            doc = json.loads(page.body)
            for p in range(2, (doc["total"] + 199) // 200 + 1):
                more = await http.fetch(api + f"jobs/search?status=QUEUING,RUNNING&page_size=200&page={p}", headers=headers)
                doc["items"] += json.loads(more.body)["items"]
            backend_ids = {j["id"]: j["backend_job_id"] for j in doc["items"]}
            if time.perf_counter() - t0 > 300:
                raise TimeoutError("jobs never reached QUEUING")
            await asyncio.sleep(0.05)
        queuing_s = time.perf_counter() - t0
        visible_s = await until_visible(list(backend_ids.values()), t0)
        return {"jobs": len(ids), "submit_s": accepted_s, "per_s": len(ids) / visible_s,
                "accepted_per_s": len(ids) / accepted_s, "all_queuing_in_api_s": queuing_s,
                "all_visible_s": visible_s}
    finally:
        server.stop()


async def scenario_latency(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """Delay from squeue showing a state change to our WebSocket client receiving its event."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    server = _lab_server(base, args)
    client = server.client()
    ws = await websocket_connect(HTTPRequest(client.stream_url(client.request("GET", "events/latest")["last_event_id"]),
                                             headers={"Authorization": f"token {server.token}"}))
    received: dict[tuple[str, str], float] = {}

    async def listen() -> None:
        while (msg := await ws.read_message()) is not None:
            now = time.perf_counter()
            data = json.loads(msg)
            for ev in data if isinstance(data, list) else [data]:
                received.setdefault((ev["job_id"], ev["type"]), now)

    listener = asyncio.ensure_future(listen())
    seen: dict[tuple[str, str], float] = {}
    try:
        jobs = [client.submit("Script", params={"path": "nap.py", "gpu_count": 0}) for _ in range(args.latency_jobs)]
        slurm_of: dict[str, str] = {}
        deadline = time.perf_counter() + 180
        while len([k for k in seen if k[1] == "job.completed"]) < len(jobs) and time.perf_counter() < deadline:
            for job in jobs:
                if job["id"] not in slurm_of:
                    bid = client.job(job["id"])["backend_job_id"]
                    if bid:
                        slurm_of[job["id"]] = bid
            out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i %T"],
                                 capture_output=True, text=True).stdout  # fmt: skip
            states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
            now = time.perf_counter()
            for job_id, bid in slurm_of.items():
                state = states.get(bid)
                if state == "RUNNING":
                    seen.setdefault((job_id, "job.running"), now)
                elif state == "COMPLETED":
                    seen.setdefault((job_id, "job.completed"), now)
            await asyncio.sleep(0.02)
        await asyncio.sleep(args.poll_interval + args.min_poll_interval + 1)
        delays = sorted(1000 * (received[k] - t) for k, t in seen.items() if k in received)
        return {"changes": len(seen), "delivered": len(delays),
                "delay_ms_p50": delays[len(delays) // 2], "delay_ms_max": delays[-1],
                "floor_ms": 1000 * max(args.poll_interval, args.min_poll_interval) + 100}
    finally:
        listener.cancel()
        ws.close()
        server.stop()


SCENARIOS: dict[str, Callable[[argparse.Namespace, Path], Awaitable[dict[str, Any]]]] = {
    "raw": scenario_raw,
    "backend": scenario_backend,
    "backend_concurrent": scenario_backend_concurrent,
    "array": scenario_array,
    "api": scenario_api,
    "latency": scenario_latency,
    "poll_load": scenario_poll_load,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each submission scenario")
    parser.add_argument("--active", type=lambda s: [int(x) for x in s.split(",")], default=[50, 500])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of polling per load level")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="the orchestrator's poll interval")
    parser.add_argument("--min-poll-interval", type=float, default=2.0, help="SlurmBackend.min_poll_interval")
    parser.add_argument("--latency-jobs", type=int, default=10, help="real jobs timed by the latency scenario")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    args = parser.parse_args()
    if not shutil.which("sbatch"):
        sys.exit("no sbatch: run scripts/slurm-cluster install && scripts/slurm-cluster start")
    out: dict[str, Any] = {"slurm": subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()}
    base = Path(tempfile.mkdtemp(prefix="chl-bench-slurm-"))
    try:
        names = args.scenario or list(SCENARIOS)
        submission = [n for n in names if n not in ("poll_load", "latency")]
        # Submission scenarios run in interleaved rounds (raw, backend, ..., raw, backend, ...)
        # so that load from elsewhere on the machine hits them alike; medians are reported.
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in submission}
        for r in range(args.rounds):
            for name in submission:
                cancel_all()
                res = await SCENARIOS[name](args, base / f"{name}-{r}")
                runs[name].append(res)
                print(name, r, json.dumps(res), flush=True)
                cancel_all()
        for name, results in runs.items():
            out[name] = {
                "jobs": results[0]["jobs"],
                "rounds": len(results),
                "per_s_median": statistics.median(x["per_s"] for x in results),
                "per_s_all": [round(x["per_s"], 1) for x in results],
                "all_visible_s_median": statistics.median(x["all_visible_s"] for x in results),
                "commands": results[0].get("commands"),
            }
        if "latency" in names:
            cancel_all()
            out["latency"] = await scenario_latency(args, base / "latency")
            print("latency", json.dumps(out["latency"]), flush=True)
        if "poll_load" in names:
            cancel_all()
            out["poll_load"] = await scenario_poll_load(args, base / "poll_load")
            cancel_all()
        if "raw" in out and "backend" in out:
            out["backend_vs_raw_rate"] = out["backend"]["per_s_median"] / out["raw"]["per_s_median"]
        if "raw" in out and "api" in out:
            # ≤ 1.2 is the floor: time for N jobs to reach squeue through our API, over raw sbatch's.
            out["api_vs_raw_time"] = out["api"]["all_visible_s_median"] / out["raw"]["all_visible_s_median"]
        print(json.dumps(out, indent=2))
    finally:
        cancel_all()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
