"""Real services the tests run against: a PostgreSQL server and Jupyter servers in their own processes.

PostgreSQL comes from Debian's packages (``.ci/run`` and the README's test
command install it); it is started here in a temporary folder on a free
port, as the ``postgres`` user when the tests run as root, and stopped at the
end of the session. A missing PostgreSQL is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.notebook.client import Client

REPO = Path(__file__).resolve().parent.parent
HUB_PROXY = REPO / ".services" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed: the test suite needs a real server "
            "(apt-get install postgresql, as the README's test command does)"
        )
    return Path(found[-1]).parent


class PostgresServer:
    """A throwaway PostgreSQL cluster; ``database()`` hands out fresh databases."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="chl-pg-"))
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else os.environ.get("USER", "postgres")

    def _run(self, *cmd: str, **kw: Any) -> subprocess.CompletedProcess:
        if self.as_root:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)

    def start(self) -> PostgresServer:
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", self.user, "-A", "trust", "--no-sync")
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w", "-t", "30",
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            "start",
        )
        return self

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{name}"


class NatsServer:
    """A real ``nats-server`` with JetStream (Debian's package), on a free port, its store in a temp folder.

    ``stop``/``start`` keep the store and the port (an outage and a recovery); ``kill`` is SIGKILL.
    """

    def __init__(self) -> None:
        self.bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.path.exists(self.bin):
            raise RuntimeError("nats-server is not installed: the event bus tests need a real one "
                               "(apt-get install nats-server, as scripts/setup --test does)")
        self.dir = Path(tempfile.mkdtemp(prefix="chl-nats-"))
        self.port = free_port()
        self.monitor_port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.log = open(self.dir / "nats.log", "ab")
        self.proc = subprocess.Popen(
            [self.bin, "-js", "-sd", str(self.dir / "store"), "-a", "127.0.0.1", "-p", str(self.port),
             "-m", str(self.monitor_port)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # ready when the monitoring endpoint says JetStream is up
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.tail()}")
            if self._healthy():
                return self
            time.sleep(0.05)
        raise TimeoutError(f"nats-server did not start in {timeout}s: {self.tail()}")

    def _healthy(self) -> bool:
        # /healthz answers 200 once the server, JetStream included, is ready
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def tail(self) -> str:
        return (self.dir / "nats.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), as an operator's restart."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc:
            self.log.close()

    def kill(self) -> None:
        """SIGKILL: a crash of the broker."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class LabServer:
    """A ``jupyter server`` with the extension, in its own process, like a user's.

    Used where the test needs the server to die for real (restart
    reconciliation) and by the benchmarks.
    """

    def __init__(self, root: Path, *, db_url: str | None = None, config: dict[str, Any] | None = None,
                 token: str = "test-token", app: str = "server", run_as: str | None = None) -> None:
        self.root = Path(root)
        #: A Unix user to run the server as (a hub's single-user server runs as its user).
        self.run_as = run_as
        self.port = free_port()
        self.token = token
        self.app = app
        self.state = self.root.parent / f"{self.root.name}-state"
        self.state.mkdir(parents=True, exist_ok=True)
        cfg = {"db_url": db_url or f"sqlite+aiosqlite:///{self.state / 'jobs.db'}",
               "work_dir": str(self.root / "jobs"), "datasets_dir": str(self.root / "datasets"),
               "poll_interval": 0.2}
        cfg.update(config or {})
        self.config = cfg
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def submit_burst(self, http: Any, submission: dict[str, Any], n: int, clients: int) -> list[str]:
        """POST ``jobs/submit`` ``n`` times from ``clients`` concurrent connections; the job ids.

        ``http`` is the caller's tornado ``AsyncHTTPClient``: its ``max_clients`` bounds the
        connections, as a benchmark chooses.
        """
        url = self.url + "cosmic-horizons/api/jobs/submit"
        body, headers = json.dumps(submission), {"Authorization": f"token {self.token}"}
        left, ids = list(range(n)), []

        async def one_client() -> None:
            while left:
                left.pop()
                resp = await http.fetch(url, method="POST", body=body, headers=headers)
                ids.append(json.loads(resp.body)["id"])

        await asyncio.gather(*[one_client() for _ in range(clients)])
        return ids

    def start(self, timeout: float = 60.0) -> LabServer:
        (self.root / "datasets").mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "jupyter", self.app, "--no-browser", "--allow-root",
                f"--port={self.port}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={self.root}",
                f"--IdentityProvider.token={self.token}", "--ServerApp.port_retries=0"]
        # "Section.trait" keys configure other classes (e.g. SlurmBackend.partition).
        args += [f"--{k}={v}" if "." in k else f"--CosmicHorizons.{k}={v}" for k, v in self.config.items()]
        env = dict(os.environ, JUPYTER_DATA_DIR=str(self.state / "data"), JUPYTER_RUNTIME_DIR=str(self.state / "runtime"),
                   JUPYTER_CONFIG_DIR=str(self.state / "config"))
        if self.run_as:
            for path in (self.root, self.state):
                subprocess.run(["chown", "-R", f"{self.run_as}:", str(path)], check=True)
            env.update(HOME=str(self.state), USER=self.run_as, LOGNAME=self.run_as)
            args = ["runuser", "-u", self.run_as, "--", *args]
        self.log = open(self.state / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        deadline = time.monotonic() + timeout
        client = self.client()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: see {self.log.name}")
            try:
                client.health()
                return self
            except Exception:
                time.sleep(0.2)
        raise TimeoutError(f"the server did not answer in {timeout}s: see {self.log.name}")

    def client(self) -> Client:
        return Client(self.url, self.token)

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def write_script(root: Path, name: str, code: str) -> str:
    path = Path(root) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)
    return name


def job_pids(work_dir: Path) -> list[int]:
    pids = []
    for f in Path(work_dir).glob("*/*/local.json"):
        try:
            pids.append(json.loads(f.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pass
    return pids


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid``."""
    import psutil

    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def kill_job_groups(work_dir: Path) -> None:
    """Leave no job process behind a test (they run in their own sessions on purpose)."""
    for pid in job_pids(work_dir):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class HubServer:
    """A real JupyterHub: configurable-http-proxy (npm, ``scripts/setup --test``), the dummy
    authenticator (any password), ``SimpleLocalProcessSpawner`` (each user's server a process
    of this Unix user, its home under ``root/home/<name>``), an admin service token for the API."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.tokens: dict[str, str] = {}

    def start(self) -> HubServer:
        bin_dir = Path(sys.executable).parent
        config = f"""
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {free_port()}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.command = [{str(HUB_PROXY)!r}]
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
        """Create ``name`` (once), start their server, and return a token of theirs."""
        if name in self.tokens:
            return self.tokens[name]
        self.api("POST", f"/hub/api/users/{name}")
        token = self.api("POST", f"/hub/api/users/{name}/tokens", {"note": "test", "expires_in": 3600})["token"]
        self.tokens[name] = token
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
            for name in self.tokens:
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
