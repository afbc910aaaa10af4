"""The kill -9 drill as figures: kills survived on each store, jobs, lost, double runs.

    python benchmarks/drill_crash.py [--jobs 200] [--kills 6] [--stores sqlite,postgresql]

Runs ``tests/crash_drill.py`` against real servers (PostgreSQL from ``tests/services.py``)
and prints one row per store, with the load average before and after: the drill is a crash
test, its seconds say little on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.crash_drill import run_drill  # noqa: E402
from tests.services import PostgresServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    rows = []
    postgres = None
    load_before = os.getloadavg()
    try:
        for store in args.stores.split(","):
            with tempfile.TemporaryDirectory(prefix=f"drill-{store}-") as tmp:
                if store == "postgresql":
                    postgres = postgres or PostgresServer().start()
                    db_url = postgres.database()
                else:
                    db_url = None
                rows.append(run_drill(Path(tmp) / "root", db_url=db_url, store=store, jobs=args.jobs,
                                      kills=args.kills, seed=args.seed))
    finally:
        if postgres is not None:
            postgres.stop()
    load_after = os.getloadavg()
    head = ("store", "jobs", "kills", "in window", "adopted", "completed", "lost", "double runs",
            "terminal events ≠1", "ws dup", "ws missed", "reconnects", "seconds")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        odd_terminal = sum(1 for n in r.terminal_events_per_job.values() if n != 1)
        print(" | ".join(str(x) for x in (
            r.store, r.jobs, r.kills, r.kills_in_window, r.adopted, r.statuses["COMPLETED"], r.lost,
            r.double_runs, odd_terminal, r.stream_duplicates, r.stream_missed, r.reconnects, f"{r.seconds:.0f}",
        )))
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    bad = any(r.lost or r.double_runs or r.stream_duplicates or r.stream_missed for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
