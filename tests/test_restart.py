"""A crash of the server loses no job: a new server on the same store and work dir re-attaches."""

from __future__ import annotations

import getpass
import json
import os
import signal
import time
from pathlib import Path

import pytest

from .services import LabServer, kill_job_groups, write_script

SLOW = """
import time
from cosmic_horizons_lab.executor import report
for i in range(10):
    report(progress=i / 10)
    time.sleep(0.3)
result = {"finished": True}
"""


@pytest.fixture
def server_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    yield root
    kill_job_groups(root / "jobs")



@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_job_outlives_a_killed_server_and_completes_under_the_next(server_root, db_url):
    write_script(server_root, "slow.py", SLOW)
    first = LabServer(server_root, db_url=db_url).start()
    client = first.client()
    job = client.submit("Script", params={"path": "slow.py"})
    queued = client.submit("Script", params={"path": "slow.py"}, priority=0)
    client.wait(job["id"], statuses={"RUNNING"}, timeout=90)
    first.kill()  # SIGKILL mid-job

    second = LabServer(server_root, db_url=db_url, config={"local_slots": 1})
    second.port = first.port
    second.start()
    try:
        client = second.client()
        done = client.wait(job["id"], timeout=90)
        assert done["status"] == "COMPLETED", done
        assert done["result"] == {"script": "slow.py", "result": {"finished": True}}
        later = client.wait(queued["id"], timeout=60)
        assert later["status"] == "COMPLETED"
        events = client.events(job["id"])
        types = [e["type"] for e in events]
        assert types[0] == "job.submitted" and types[-1] == "job.completed"
        assert types.count("job.completed") == 1 and types.count("job.running") == 1
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids))
    finally:
        second.stop()


def test_a_job_that_died_while_the_server_was_down_is_marked_lost(server_root):
    write_script(server_root, "slow.py", SLOW)
    first = LabServer(server_root).start()
    client = first.client()
    job = client.submit("Script", params={"path": "slow.py"})
    client.wait(job["id"], statuses={"RUNNING"}, timeout=90)
    first.kill()
    pid = json.loads((server_root / "jobs" / getpass.getuser() / job["id"] / "local.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)  # the job dies too, leaving no exit status

    second = LabServer(server_root)
    second.port = first.port
    second.start()
    try:
        done = second.client().wait(job["id"], timeout=90)
        assert done["status"] == "FAILED" and done["reason"] == "lost", done
    finally:
        second.stop()


def test_a_lost_job_with_retries_runs_again(server_root):
    write_script(server_root, "slow.py", SLOW)
    first = LabServer(server_root).start()
    client = first.client()
    job = client.submit("Script", params={"path": "slow.py", "retries": 1})
    client.wait(job["id"], statuses={"RUNNING"}, timeout=90)
    first.kill()
    pid = json.loads((server_root / "jobs" / getpass.getuser() / job["id"] / "local.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)

    second = LabServer(server_root)
    second.port = first.port
    second.start()
    try:
        done = second.client().wait(job["id"], timeout=60)
        assert done["status"] == "COMPLETED" and done["attempts"] == 2, done
        types = [e["type"] for e in second.client().events(job["id"])]
        assert "job.queued" in types and types[-1] == "job.completed"
    finally:
        second.stop()


# -- exactly-once launch: a kill between the launch's intent and its record ----------------
ONCE = """
import os
from pathlib import Path
with open(os.environ["DRILL_SHARED_FILE"], "a") as fh:
    fh.write(Path(os.environ["COSMIC_HORIZONS_JOB_DIR"]).name + "\\n")
result = "once"
"""


def _intent(db: Path, job_id: str) -> str | None:
    import sqlite3

    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT launch_token FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row[0] if row else None


@pytest.mark.parametrize("started", [False, True], ids=["before-the-start", "after-the-start"])
def test_a_kill_inside_the_launch_window_runs_the_job_exactly_once(server_root, monkeypatch, started):
    """Killed after the launch's intent committed: before the process started (nothing to find:
    launched again, with a fresh token) or after it started (adopted by its token, not rerun)."""
    from cosmic_horizons_lab.protocol.jobdir import LAUNCH_TOKEN_FILE, job_dir
    from cosmic_horizons_lab.server.jobs.dispatch import DRILL_PAUSE_ENV

    ran = server_root / "ran.txt"
    write_script(server_root, "once.py", ONCE)
    monkeypatch.setenv("DRILL_SHARED_FILE", str(ran))
    monkeypatch.setenv(DRILL_PAUSE_ENV, "4")
    first = LabServer(server_root).start()
    db = first.state / "jobs.db"
    job = first.client().submit("Script", params={"path": "once.py"})
    directory = job_dir(server_root / "jobs", getpass.getuser(), job["id"])
    deadline = time.monotonic() + 60
    token = None
    while time.monotonic() < deadline:
        token = token or _intent(db, job["id"])
        if token and (not started or (directory / LAUNCH_TOKEN_FILE).exists()):
            break
        time.sleep(0.02)
    assert token, "the intent never committed"
    assert (directory / LAUNCH_TOKEN_FILE).exists() == started
    first.kill()
    monkeypatch.delenv(DRILL_PAUSE_ENV)

    second = LabServer(server_root)
    second.port = first.port
    second.start()
    try:
        done = second.client().wait(job["id"], timeout=90)
        queuing = [e for e in second.client().events(job["id"]) if e["type"] == "job.queuing"]
    finally:
        second.stop()
    assert done["status"] == "COMPLETED" and done["attempts"] == 1, done
    assert ran.read_text().split() == [job["id"]]  # it ran, once
    assert len(queuing) == 1 and bool(queuing[0]["payload"].get("adopted")) == started
    final_token = (directory / LAUNCH_TOKEN_FILE).read_text().split()[0]
    assert (final_token == token) == started  # adopted: the first token; relaunched: a fresh one
