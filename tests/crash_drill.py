"""The kill -9 drill: many trivial jobs, a real server SIGKILLed at seeded random moments.

Used by ``tests/test_crash_drill.py`` (assertions) and ``benchmarks/drill_crash.py`` (the
figures). Each job is a Script that appends its job id and pid to one shared file, so a job
that ran twice shows twice there, whatever the store says. A WebSocket client follows the
event stream all along, reconnecting after each kill from the last id it saw, and keeps every
event it is sent (duplicates included), so a missed or repeated event shows too.

Half the kills wait for a job's starter to write its launch token into its job directory and
strike at once: with ``COSMIC_HORIZONS_DRILL_DISPATCH_PAUSE`` set, the server is then between
starting that job and recording the start (the window exactly-once launching closes). The
other half strike at a random moment.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.protocol.jobdir import LAUNCH_TOKEN_FILE
from cosmic_horizons_lab.server.jobs.dispatch import DRILL_PAUSE_ENV

from .services import LabServer, kill_job_groups, write_script

TERMINAL_EVENTS = {"job.completed", "job.failed", "job.cancelled"}
ENDED = ("COMPLETED", "FAILED", "CANCELLED")

#: The job: append "<job id> <pid>" to the shared file (one write, O_APPEND: lines never mix).
APPEND = """
import os, random, time
from pathlib import Path
job_id = Path(os.environ["COSMIC_HORIZONS_JOB_DIR"]).name
time.sleep(random.uniform(0.0, 0.2))
fd = os.open(os.environ.get("DRILL_SHARED_FILE", "ran.txt"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, f"{job_id} {os.getpid()}\\n".encode())
os.close(fd)
result = {"job": job_id}
"""


class StreamRecorder:
    """A WebSocket client that keeps every event it receives and reconnects with after=<last id>."""

    def __init__(self, server: LabServer) -> None:
        self.server = server
        self.events: list[dict[str, Any]] = []
        self.connections = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-stream", daemon=True)

    def start(self) -> "StreamRecorder":
        self._thread.start()
        return self

    def _run(self) -> None:
        from websockets.sync.client import connect

        client = self.server.client()
        while not self._stop.is_set():
            try:
                with connect(client.stream_url(self.last), open_timeout=5,
                             additional_headers={"Authorization": f"token {self.server.token}"}) as ws:
                    self.connections += 1
                    while not self._stop.is_set():
                        try:
                            message = ws.recv(timeout=0.3)
                        except TimeoutError:
                            continue
                        decoded = json.loads(message)
                        for event in decoded if isinstance(decoded, list) else [decoded]:
                            self.events.append(event)  # duplicates kept: they are what we look for
                            self.last = max(self.last, int(event["id"]))
            except Exception:  # the server died: reconnect from the last id seen
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class DrillResult:
    store: str
    jobs: int
    kills: int
    kills_in_window: int
    statuses: Counter = field(default_factory=Counter)
    runs_per_job: Counter = field(default_factory=Counter)
    terminal_events_per_job: Counter = field(default_factory=Counter)
    adopted: int = 0
    stream_events: int = 0
    stream_duplicates: int = 0
    stream_missed: int = 0
    stream_out_of_order: int = 0
    reconnects: int = 0
    seconds: float = 0.0

    #: job ids that completed without their line in the shared file (said done, never ran)
    completed_unrun: int = 0

    @property
    def lost(self) -> int:
        """Jobs that never ended, or that completed without ever running."""
        return self.jobs - sum(self.statuses[s] for s in ENDED) + self.completed_unrun

    @property
    def double_runs(self) -> int:
        return sum(1 for n in self.runs_per_job.values() if n > 1)


def _launch_tokens(work: Path) -> set[Path]:
    return set(work.glob(f"*/*/{LAUNCH_TOKEN_FILE}"))


def run_drill(root: Path, *, db_url: str | None, store: str, jobs: int = 200, kills: int = 5, seed: int = 12,
              pause: float = 0.03, slots: int = 4, timeout: float = 170.0) -> DrillResult:
    """Run the drill in ``root``; what happened (the caller asserts or prints)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    write_script(root, "append.py", APPEND)
    shared = root / "ran.txt"
    work = root / "jobs"
    started = time.monotonic()
    saved_env = {k: os.environ.get(k) for k in (DRILL_PAUSE_ENV, "DRILL_SHARED_FILE")}
    os.environ[DRILL_PAUSE_ENV] = str(pause)
    os.environ["DRILL_SHARED_FILE"] = str(shared)
    config = {"local_slots": slots, "poll_interval": 0.2}
    server = LabServer(root, db_url=db_url, config=config).start()
    recorder = StreamRecorder(server).start()
    in_window = 0
    try:
        client = server.client()
        ids: list[str] = []
        for start in range(0, jobs, 50):
            n = min(50, jobs - start)
            batch = client.submit_batch([{"agent": "Script", "params": {"path": "append.py"}}] * n)
            ids += [j["id"] for j in batch["jobs"]]
        for k in range(kills):
            if k % 2 == 0:
                # Strike just after a starter wrote its token: inside the launch window.
                seen = _launch_tokens(work)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not (_launch_tokens(work) - seen):
                    time.sleep(0.005)
                in_window += bool(_launch_tokens(work) - seen)
            else:
                time.sleep(rng.uniform(0.2, 2.5))
            server.kill()
            port = server.port
            server = LabServer(root, db_url=db_url, config=config)
            server.port = port
            recorder.server = server
            server.start()
            time.sleep(rng.uniform(0.3, 1.5))
        client = server.client()
        deadline = time.monotonic() + timeout
        final: dict[str, dict[str, Any]] = {}
        pending = list(ids)
        while pending and time.monotonic() < deadline:
            for job_id in pending:
                final[job_id] = client.job(job_id)
            pending = [j for j in pending if final[j]["status"] not in ENDED]
            if pending:
                time.sleep(0.5)
        # Let the stream catch up with the last events, then replay everything for comparison.
        latest = client.request("GET", "events/latest")["last_event_id"]
        deadline = time.monotonic() + 15
        while recorder.last < latest and time.monotonic() < deadline:
            time.sleep(0.1)
        recorder.stop()
        replay = StreamRecorder(server)
        replay.last = 0
        replay.start()
        deadline = time.monotonic() + 30
        while replay.last < latest and time.monotonic() < deadline:
            time.sleep(0.1)
        replay.stop()
    finally:
        recorder.stop()
        server.stop()
        kill_job_groups(work)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    result = DrillResult(store=store, jobs=len(ids), kills=kills, kills_in_window=in_window,
                         seconds=time.monotonic() - started, reconnects=recorder.connections - 1)
    result.statuses = Counter(v["status"] for v in final.values())
    lines = shared.read_text().split() if shared.exists() else []
    result.runs_per_job = Counter(lines[0::2])
    result.completed_unrun = sum(1 for j in ids if final.get(j, {}).get("status") == "COMPLETED"
                                 and result.runs_per_job[j] == 0)
    full = {e["id"]: e for e in replay.events if e["id"] <= latest}
    result.terminal_events_per_job = Counter({j: 0 for j in ids})
    for event in full.values():
        if event["type"] in TERMINAL_EVENTS and event.get("job_id") in result.terminal_events_per_job:
            result.terminal_events_per_job[event["job_id"]] += 1
    result.adopted = sum(1 for e in full.values() if e["type"] == "job.queuing" and e["payload"].get("adopted"))
    got = [e["id"] for e in recorder.events if e["id"] <= latest]
    result.stream_events = len(got)
    result.stream_duplicates = len(got) - len(set(got))
    result.stream_missed = len(set(full) - set(got))
    result.stream_out_of_order = sum(1 for a, b in zip(got, got[1:]) if b <= a)
    return result
