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
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from ..services import free_port

REPO = Path(__file__).resolve().parents[2]
PROXY = REPO / ".services" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"

pytestmark = pytest.mark.timeout(300)


class Hub:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Hub":
        bin_dir = Path(sys.executable).parent
        config = f"""
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {free_port()}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.command = [{str(PROXY)!r}]
c.JupyterHub.db_url = "sqlite:///{self.root}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{self.root}/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{self.root}/home/{{username}}"
c.Spawner.cmd = [{str(bin_dir / "jupyterhub-singleuser")!r}]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.Spawner.env_keep = ["PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "SLURM_CONF"]
c.Spawner.args = [{'"--allow-root",' if os.getuid() == 0 else ''}  # CI runs as root
    "--CosmicHorizons.datasets_dir={self.root}/datasets",
]
c.JupyterHub.services = [{{"name": "tester", "api_token": {self.admin_token!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["tester"]}}]
"""
        (self.root / "jupyterhub_config.py").write_text(config)
        (self.root / "datasets").mkdir(exist_ok=True)
        self.log = open(self.root / "hub.log", "wb")
        self.proc = subprocess.Popen(
            [str(bin_dir / "jupyterhub"), "-f", str(self.root / "jupyterhub_config.py")],
            cwd=self.root, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                self.api("GET", "/hub/api/")
                return self
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("JupyterHub did not start:\n" + self.tail()) from None
                time.sleep(0.3)

    def tail(self) -> str:
        return (self.root / "hub.log").read_text(errors="replace")[-6000:]

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        req = urllib.request.Request(
            self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {token or self.admin_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = resp.read()
        return json.loads(data) if data else None

    def status(self, method: str, path: str, token: str) -> int:
        try:
            self.api(method, path, token=token)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200

    def user_with_server(self, name: str) -> str:
        """Create ``name``, start their server, and return a token of theirs."""
        self.api("POST", f"/hub/api/users/{name}")
        token = self.api("POST", f"/hub/api/users/{name}/tokens", {"note": "test", "expires_in": 3600})["token"]
        try:
            self.api("POST", f"/hub/api/users/{name}/server")
        except urllib.error.HTTPError as exc:
            if exc.code != 202:
                raise
        deadline = time.monotonic() + 180
        while True:
            user = self.api("GET", f"/hub/api/users/{name}")
            server = user.get("servers", {}).get("", {})
            if server.get("ready"):
                return token
            assert time.monotonic() < deadline, f"{name}'s server never became ready:\n{self.tail()}"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for name in ("astro", "radio"):
                try:
                    self.api("DELETE", f"/hub/api/users/{name}/server")
                except Exception:
                    pass
            time.sleep(1)
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        subprocess.run(["pkill", "-f", f"{self.root}/home"], check=False)
        self.log.close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Hub:
    if not PROXY.exists() or shutil.which("node") is None:
        pytest.fail("configurable-http-proxy is not installed: run scripts/setup --test")
    root = tmp_path_factory.mktemp("hub")
    hub = Hub(root).start()
    yield hub
    hub.stop()


async def run_in_kernel(hub: Hub, user: str, token: str, code: str, timeout: float = 120) -> tuple[str, dict]:
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
        "print('LOG', job.logs().strip())\n"
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
