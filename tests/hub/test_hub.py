"""On a real JupyterHub: the extension in a spawned single-user server, ``Lab()`` in its kernel.

JupyterHub (with configurable-http-proxy from npm, which ``scripts/setup --test``
installs) spawns each user's server with ``SimpleLocalProcessSpawner`` (same Unix
user, a home under the test's folder) and logs users in with the dummy
authenticator. Everything between the browser and the job is real: the proxy, the
hub's OAuth identity in the single-user server, our extension, a kernel started
through the REST API, and a job the kernel submits with ``Lab()``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid

import pytest

from ..services import HUB_PROXY, HubServer

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> HubServer:
    if not HUB_PROXY.exists() or shutil.which("node") is None:
        pytest.fail("configurable-http-proxy is not installed: run scripts/setup --test")
    hub = HubServer(tmp_path_factory.mktemp("hub")).start()
    yield hub
    hub.stop()


async def run_in_kernel(hub: HubServer, user: str, token: str, code: str, timeout: float = 120) -> tuple[str, dict]:
    """Start a kernel through the proxy, run ``code``, return (its stdout, the execute reply)."""
    import websockets

    kernel = hub.api("POST", f"/user/{user}/api/kernels", {"name": "python3"}, token=token)
    ws_url = hub.url.replace("http", "ws", 1) + f"/user/{user}/api/kernels/{kernel['id']}/channels"
    msg_id = uuid.uuid4().hex
    request = {
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": user,
                   "session": uuid.uuid4().hex, "date": "", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }
    out: list[str] = []
    try:
        async with websockets.connect(ws_url, additional_headers={"Authorization": f"token {token}"},
                                      max_size=None) as ws:
            await ws.send(json.dumps(request))
            async with asyncio.timeout(timeout):
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    kind = msg["header"]["msg_type"]
                    if kind == "stream":
                        out.append(msg["content"]["text"])
                    elif kind == "error":
                        out.append("\n".join(msg["content"]["traceback"]))
                    elif kind == "execute_reply":
                        return "".join(out), msg["content"]
    finally:
        hub.api("DELETE", f"/user/{user}/api/kernels/{kernel['id']}", token=token)


async def test_lab_finds_its_server_on_a_hub_and_jobs_belong_to_the_hub_user(hub):
    token = hub.user_with_server("astro")
    code = (
        "from cosmic_horizons_lab import Lab\n"
        "lab = Lab()\n"
        "print('URL', lab.url)\n"
        "print('DATASETS', sorted(d['id'] for d in lab.datasets()))\n"
        "job = lab.submit('Script', params={'path': 'hello.py'})\n"
        "job.wait(timeout=120, progress=False)\n"
        "print('STATUS', job.status)\n"
        "print('LOG', ' | '.join(job.logs().strip().splitlines()))\n"  # the whole log on one line
        "print('JOB', job.id)\n"
    )
    home = hub.root / "home" / "astro"
    (home / "hello.py").write_text("import getpass\nprint('hello from', getpass.getuser())\n")
    out, reply = await run_in_kernel(hub, "astro", token, code)
    assert reply["status"] == "ok", out
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert lines["URL"].rstrip("/").endswith("/user/astro"), out  # found through the hub's environment
    assert "VLA.TDEM0003.1src" in lines["DATASETS"]
    assert lines["STATUS"] == "COMPLETED" and "hello from" in lines["LOG"], out

    # The REST API through the proxy, with the user's hub token: the job is the hub user's.
    job = hub.api("GET", f"/user/astro/cosmic-horizons/api/jobs/{lines['JOB']}", token=token)
    assert job["user"] == "astro" and job["status"] == "COMPLETED"
    # The server's defaults: the job store and job folders under the user's own root (their home).
    assert (hub.root / "home" / "astro" / "cosmic-horizons-jobs" / "astro" / lines["JOB"] / "job.json").exists()

    # Another hub user cannot reach astro's server at all: the hub refuses, not our API.
    other = hub.user_with_server("radio")
    assert hub.status("GET", f"/user/astro/cosmic-horizons/api/jobs/{lines['JOB']}", other) in (403, 404)
    jobs = hub.api("GET", "/user/radio/cosmic-horizons/api/jobs/history/list", token=other)
    assert jobs["total"] == 0 and jobs["items"] == []
