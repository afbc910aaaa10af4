"""Usage analytics at scale (figures, not a timed test): 1,000,000 jobs and 10,000,000 samples.

    python benchmarks/bench_analytics.py [--jobs 1000000] [--samples-per-job 10] [--users 500]
                                         [--runs 20] [--dir /tmp/chl-bench-analytics] [--json out.json]

1. A real store (SQLite file, migrated by the server's own Alembic migrations) is filled in bulk by
   SQL (a recursive CTE: jobs over a year, 500 users, 6 agents, each job with one run and
   ``--samples-per-job`` GPU samples), charged as ``accounting/costs.py`` charges (1 SU per
   node-hour, a quarter-hour minimum, 0.35 USD per GPU-hour).
2. The full Parquet export (``server/analytics/export.py``) is timed; then, ``--runs`` times,
   1,000 new jobs (each with one sample) are committed and the incremental export that follows
   is timed: its cost must follow the 1,000 rows, not the million.
3. Each usage endpoint's query (``UsageAnalytics``: what the handler awaits, the export being
   fresh) is called ``--runs`` times: p50 and p95 (the floor: p95 < 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cosmic_horizons_lab.server.analytics.export import JOBS, RUNS, SAMPLES
from cosmic_horizons_lab.server.analytics.service import UsageAnalytics
from cosmic_horizons_lab.server.store.database import Store, sqlite_url

FLOOR_S = 2.0
AGENTS = ("AlphaCal", "ImageReconstruction", "AnomalyDetection", "Script", "Notebook", "SlurmScript")
#: A year of history ending here (UTC); times are written as SQLAlchemy writes them on SQLite.
END = "2026-11-30 00:00:00"


def _ts(expr: str) -> str:
    """SQLite text of a time ``expr`` seconds after the history's start, with 6 decimals as SQLAlchemy writes."""
    return f"strftime('%Y-%m-%d %H:%M:%S', '{END}', '-365 days', '+' || ({expr}) || ' seconds') || '.000000'"


def fill(db: Path, jobs: int, per_job: int, users: int) -> dict[str, float]:
    """Bulk insert by SQL; returns seconds per table."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-262144")
    times: dict[str, float] = {}
    agents = " ".join(f"WHEN {i} THEN '{a}'" for i, a in enumerate(AGENTS))
    t = time.perf_counter()
    # created: spread over the year; wait 0..1 h; runtime 1 min..6 h; 80 % completed, 12 % failed, 8 % cancelled
    # (pseudo-random by multiplicative hashing of the row number: SQLite may evaluate random() once per use)
    con.execute(f"""
        WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < {jobs - 1}),
        j AS (SELECT x, x * (365 * 86400 / {jobs}.0) AS c, (x * 2654435761) % 3600 AS w,
                     60 + (x * 40503 + 7) % 21540 AS r, (x * 7919 + 3) % 100 AS s, 1 + (x * 31 + x / 7) % 4 AS g FROM n)
        INSERT INTO jobs (id, user, agent, status, progress, priority, params, metrics, correlation_id, depends_on,
                          backend, server_id, gpu_count, retries, attempts, created_at, updated_at, started_at, completed_at,
                          gpu_hours, cost_usd, su_charged)
        SELECT printf('j%031d', x), 'user' || (x % {users}), CASE x % {len(AGENTS)} {agents} END,
               CASE WHEN s < 80 THEN 'COMPLETED' WHEN s < 92 THEN 'FAILED' ELSE 'CANCELLED' END,
               1.0, 5, '{{}}', '{{}}', 'c', '[]', 'local', 'bench', g, 0, 1,
               {_ts('CAST(c AS INTEGER)')}, {_ts('CAST(c AS INTEGER) + w + r')}, {_ts('CAST(c AS INTEGER) + w')},
               {_ts('CAST(c AS INTEGER) + w + r')},
               g * r / 3600.0, g * r / 3600.0 * 0.35, max(r / 3600.0, 0.25) * 1.0
        FROM j""")
    con.commit()
    times["jobs"] = time.perf_counter() - t
    t = time.perf_counter()
    con.execute("""INSERT INTO runs (job_id, attempt, backend, status, events_offset, samples_offset, submitted_at,
                                     started_at, ended_at)
                   SELECT id, 1, 'local', status, 0, 0, created_at, started_at, completed_at FROM jobs""")
    con.commit()
    times["runs"] = time.perf_counter() - t
    t = time.perf_counter()
    con.execute(f"""
        WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < {jobs * per_job - 1})
        INSERT INTO job_samples (job_id, user, host, ts, kind, gpu_uuid, gpu_index, utilization, memory_bytes,
                                 memory_total_bytes, power_watts, temperature_c)
        SELECT printf('j%031d', x / {per_job}), 'user' || ((x / {per_job}) % {users}), 'c' || (x % 16), 
               {_ts(f'CAST((x / {per_job}) * (365 * 86400 / {jobs}.0) AS INTEGER) + 3600 + (x % {per_job}) * 60')},
               'gpu', 'GPU-' || (x % 16), 0, ((x * 2654435761) % 10000) / 100.0, (x * 40503) % 40000000000,
               40000000000, 250.0, 55.0
        FROM n""")
    con.commit()
    times["samples"] = time.perf_counter() - t
    con.close()
    return times


def add_news(db: Path, seq: int, n: int) -> None:
    """``n`` new jobs (completed now), each with a run and one sample: what an export picks up next."""
    con = sqlite3.connect(db)
    now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()) + ".000000"
    tag = f"n{time.time_ns() // 1000:d}{seq:04d}"  # unique across runs (--reuse)
    con.executemany(
        "INSERT INTO jobs (id, user, agent, status, progress, priority, params, metrics, correlation_id, depends_on, "
        "backend, server_id, gpu_count, retries, attempts, created_at, updated_at, started_at, completed_at, gpu_hours, "
        "cost_usd, su_charged) VALUES (?, ?, 'Script', 'COMPLETED', 1, 5, '{}', '{}', 'c', '[]', 'local', 'bench', 1, 0, 1, "
        "?, ?, ?, ?, 0.5, 0.175, 0.5)",
        [(f"{tag}{k:06d}", f"user{k % 500}", now, now, now, now) for k in range(n)])
    con.executemany(
        "INSERT INTO runs (job_id, attempt, backend, status, events_offset, samples_offset, submitted_at) "
        "VALUES (?, 1, 'local', 'COMPLETED', 0, 0, ?)", [(f"{tag}{k:06d}", now) for k in range(n)])
    con.executemany(
        "INSERT INTO job_samples (job_id, user, host, ts, kind, utilization, memory_bytes) "
        "VALUES (?, ?, 'c0', ?, 'gpu', 50.0, 1)", [(f"{tag}{k:06d}", f"user{k % 500}", now) for k in range(n)])
    con.commit()
    con.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir)
    db = root / "jobs.db"
    reuse = args.reuse and db.exists() and (root / "analytics").exists()
    if not reuse:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
    store = Store(sqlite_url(db))
    await store.open()  # the server's own migrations
    out: dict[str, Any] = {"jobs": args.jobs, "samples": args.jobs * args.samples_per_job}
    service = UsageAnalytics(store, root / "analytics", freshness=1e9, compact_parts=10**6)
    if reuse:  # the store and its export from an earlier run (--reuse): the queries and increments only
        out["full_export"] = json.loads((root / "full_export.json").read_text())
    else:
        out["fill_seconds"] = fill(db, args.jobs, args.samples_per_job, args.users)
        print(f"filled: {out['fill_seconds']}", flush=True)
        t = time.perf_counter()
        full = await service.export.export()
        out["full_export"] = {"seconds": time.perf_counter() - t, **full}
        (root / "full_export.json").write_text(json.dumps(out["full_export"]))
    service._exported_at, service._exported_wall = time.monotonic(), None
    print(f"full export: {out['full_export']}", flush=True)
    incremental = []
    first = len(service.export.parts("jobs"))
    for i in range(first, first + args.runs):
        add_news(db, i, 1000)
        t = time.perf_counter()
        got = await service.export.export()
        incremental.append(time.perf_counter() - t)
        assert got["jobs"] == 1000 and got["samples"] == 1000, got
    out["incremental_export"] = {"rows": 1000, "p50": statistics.median(incremental), "p95": pct(incremental, .95),
                                 "parts": len(service.export.parts("jobs"))}
    print(f"incremental: {out['incremental_export']}", flush=True)
    if len(service.export.parts("jobs")) > 32:  # what the service does past 32 parts (its compact_parts)
        t = time.perf_counter()
        for table in (JOBS, RUNS, SAMPLES):
            await service.export.compact(table)
        out["compaction_seconds"] = time.perf_counter() - t
        print(f"compaction: {out['compaction_seconds']:.1f} s", flush=True)
    out["parts_queried"] = len(service.export.parts("jobs"))

    rng = random.Random(7)
    calls = {
        "accounts (month buckets, the whole year)": lambda: service.account(
            "op", True, f"user{rng.randrange(args.users)}", {"period": "month"}),
        "accounts (day buckets, 90 days)": lambda: service.account(
            "op", True, f"user{rng.randrange(args.users)}", {"period": "day", "from_date": "2026-09-01"}),
        "leaderboard (by gpu_hours, the whole year)": lambda: service.leaderboard(
            True, {"by": "gpu_hours", "from_date": "2025-11-01", "limit": "20"}),
        "leaderboard (by su, month)": lambda: service.leaderboard(True, {"by": "su", "period": "month"}),
        "agents (operator: everyone, week buckets)": lambda: service.agents("op", True, {"period": "week"}),
        "agents (one user, month buckets)": lambda: service.agents(f"user{rng.randrange(args.users)}", False,
                                                                   {"period": "month"}),
    }
    out["queries"] = {}
    for name, call in calls.items():
        seconds = []
        for _ in range(args.runs):
            t = time.perf_counter()
            await call()
            seconds.append(time.perf_counter() - t)
        out["queries"][name] = {"p50": statistics.median(seconds), "p95": pct(seconds, .95), "max": max(seconds)}
        print(f"{name}: {out['queries'][name]}", flush=True)
    await store.close()
    out["parquet_bytes"] = sum(p.stat().st_size for p in (root / "analytics").rglob("*.parquet"))
    out["store_bytes"] = db.stat().st_size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--samples-per-job", type=int, default=10)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--dir", default="/tmp/chl-bench-analytics")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the store and export of an earlier run in --dir (skip the fill and the full export)")
    parser.add_argument("--json")
    args = parser.parse_args()
    started = time.perf_counter()
    out = asyncio.run(run(args))
    out["load_average"] = os.getloadavg()
    print()
    print(f"{out['jobs']:,} jobs, {out['samples']:,} samples; store {out['store_bytes'] / 2**30:.2f} GiB, "
          f"Parquet {out['parquet_bytes'] / 2**20:.0f} MiB; load average {out['load_average']}")
    print("| figure | p50 | p95 | floor |")
    print("|---|---|---|---|")
    f = out["full_export"]
    print(f"| full export ({f['jobs']:,} jobs, {f['runs']:,} runs, {f['samples']:,} samples) | "
          f"{f['seconds']:.1f} s | | |")
    inc = out["incremental_export"]
    print(f"| incremental export (1,000 new jobs + runs + samples on top) | {inc['p50'] * 1000:.0f} ms | "
          f"{inc['p95'] * 1000:.0f} ms | ≪ full |")
    if "compaction_seconds" in out:
        print(f"| compaction of {inc['parts']} parts (past 32, tiered, as the service does) | "
              f"{out['compaction_seconds']:.1f} s | | |")
    print(f"| (the queries below ran over {out['parts_queried']} part(s) of jobs) | | | |")
    for name, q in out["queries"].items():
        ok = "ok" if q["p95"] < FLOOR_S else "OVER"
        print(f"| {name} | {q['p50'] * 1000:.0f} ms | {q['p95'] * 1000:.0f} ms | < 2 s ({ok}) |")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
