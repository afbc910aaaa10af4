"""The Python client against a real server process: REST errors as exceptions, a stream that resumes."""

from __future__ import annotations

import threading
import time

import pytest

from cosmic_horizons_lab.notebook.client import ApiError, Client

from .services import LabServer, kill_job_groups, write_script

QUICK = "from cosmic_horizons_lab.executor import report\nreport(progress=0.5)\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("client") / "root"
    root.mkdir()
    write_script(root, "quick.py", QUICK)
    srv = LabServer(root).start()
    yield srv
    srv.stop()
    kill_job_groups(root / "jobs")


def test_errors_surface_as_exceptions_with_the_servers_message(server):
    client = server.client()
    with pytest.raises(ApiError) as err:
        client.submit("NoSuchAgent")
    assert err.value.status == 422 and err.value.field == "agent" and "unknown agent" in err.value.message
    with pytest.raises(ApiError) as err:
        Client(server.url, "wrong-token").health()
    assert err.value.status == 403


def test_subscription_resumes_after_a_gap_without_loss(server):
    client = server.client()
    seen: list[dict] = []
    done = threading.Event()

    def on_event(event: dict) -> None:
        seen.append(event)
        if event["type"] == "job.completed":
            done.set()

    sub = client.subscribe(on_event)  # live only: from now on
    time.sleep(0.5)
    first = client.submit("Script", params={"path": "quick.py"})
    assert done.wait(30)
    sub.close()
    assert {e["job_id"] for e in seen} == {first["id"]}
    last = sub.last_id

    missed = client.submit("Script", params={"path": "quick.py"})
    client.wait(missed["id"], timeout=30)
    expected = [e["id"] for e in client.events(missed["id"])]

    again: list[dict] = []
    done.clear()

    def on_again(event: dict) -> None:
        again.append(event)
        if event["type"] == "job.completed":
            done.set()

    sub = client.subscribe(on_again, after=last)
    assert done.wait(30)
    sub.close()
    assert [e["id"] for e in again] == expected
    assert not sub.errors


def test_lab_submit_warns_of_gpus_asked_of_a_server_without_one(server):
    """The server's warning reaches the notebook as a Python warning (issue 13)."""
    from cosmic_horizons_lab.notebook.lab import Lab

    lab = Lab(url=server.url, token=server.token)
    with pytest.warns(UserWarning, match="params.gpu_count: 2 GPUs requested, but this server has no GPU"):
        job = lab.submit("Script", params={"path": "quick.py", "gpu_count": 2})
    assert job.wait(60).status == "COMPLETED"
