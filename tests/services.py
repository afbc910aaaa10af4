"""Real services the tests run against: a PostgreSQL server and Jupyter servers in their own processes.

PostgreSQL comes from Debian's packages (``.ci/run`` and the README's test
command install it); it is started here in a temporary folder on a free
port, as the ``postgres`` user when the tests run as root, and stopped at the
end of the session. A missing PostgreSQL is a failure, never a skip.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.client import Client

REPO = Path(__file__).resolve().parent.parent


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

    def start(self) -> "PostgresServer":
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

    def start(self, timeout: float = 60.0) -> "LabServer":
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
