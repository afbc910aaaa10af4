"""A crash of the server loses no job: a new server on the same store and work dir re-attaches."""

from __future__ import annotations

import getpass
import json
import os
import signal

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
