"""Fixtures for the UI tests: a real JupyterLab with the extension, and headless Chromium.

The server runs on a free port with a temporary root (holding the tiny scripts
the browser tests submit as Script jobs), its own runtime/config dirs and job
store, so it shares nothing with a developer's own Lab. Screenshots go to
``.test-artifacts/ui/`` (kept by CI as artefacts; README pictures are copied
from there into docs/img/).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".test-artifacts" / "ui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]

FAST_SCRIPT = """\
import json
import os
import time
from pathlib import Path
from cosmic_horizons_lab.executor import report
from cosmic_horizons_lab.protocol.jobdir import JOB_DIR_ENV

steps = 4
for i in range(steps):
    time.sleep(0.25)
    print(f"step {i + 1} of {steps}", flush=True)
    # Metrics as the science agents report them on a CPU (the views write them in human units).
    report(progress=(i + 1) / steps, step=i + 1, vram_usage=667484160, device="cpu (2 threads)",
           beam_arcsec=[3.9639263928719437, 3.407454964866517])
outputs = Path(os.environ[JOB_DIR_ENV]) / "outputs"
outputs.mkdir(exist_ok=True)
(outputs / "summary.json").write_text(json.dumps({"steps": steps}))
result = {"steps": steps}
"""

SLOW_SCRIPT = """\
import time
from cosmic_horizons_lab.executor import report

for i in range(600):
    report(progress=min(0.99, i / 600))
    time.sleep(0.5)
"""

STEP_SCRIPT = """\
import time
from cosmic_horizons_lab.executor import report

n = 200
for i in range(n):
    report(progress=(i + 1) / n, step=i + 1)
    time.sleep(0.05)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A running ``jupyter lab`` and a tiny REST helper for it."""

    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, env: dict[str, str]) -> None:
        self.root = root
        self.port = port
        self.token = token
        self.proc = proc
        self.env = env
        self.url = f"http://127.0.0.1:{port}/"
        self.api = f"{self.url}cosmic-horizons/api/"

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method)
        req.add_header("Authorization", f"token {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def submit_script(self, path: str, **args: Any) -> dict[str, Any]:
        return self.request("POST", "jobs/submit", {"agent": "Script", "params": {"path": path, "args": args}})

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.request("GET", f"jobs/{job_id}")
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']}")
            time.sleep(0.1)

    def lab_url(self, path: str = "lab") -> str:
        # reset: a fresh workspace, so no notebook of an earlier test reopens beside this one.
        return f"{self.url}{path}?reset&token={self.token}"


def start_lab(root: Path, state: Path, extra: list[str] | None = None) -> LabServer:
    port = free_port()
    token = secrets.token_hex(16)
    for name in ("runtime", "config", "data", "workspaces"):
        (state / name).mkdir(parents=True, exist_ok=True)
    # No "get notified about news?" toast over the screenshots.
    notification = state / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
        "PYTHONUNBUFFERED": "1",
    }
    # Each kernel finds this server in JUPYTER_RUNTIME_DIR's list: Lab() needs no argument.
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
        f"--CosmicHorizons.db_url=sqlite+aiosqlite:///{state / 'jobs.db'}",
        "--CosmicHorizons.poll_interval=0.2", "--CosmicHorizons.local_slots=2",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        *(extra or []),
    ]
    log = open(state / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = LabServer(root, port, token, proc, env)
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited:\n{(state / 'server.log').read_text()[-4000:]}")
        try:
            if server.request("GET", "health")["status"] == "ok":
                return server
        except (urllib.error.URLError, ConnectionError, OSError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("jupyter lab did not start")
        time.sleep(0.3)


def stop_lab(server: LabServer) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    base = tmp_path_factory.mktemp("ui-lab")
    root = base / "root"
    root.mkdir()
    (root / "fast.py").write_text(FAST_SCRIPT)
    (root / "slow.py").write_text(SLOW_SCRIPT)
    (root / "steps.py").write_text(STEP_SCRIPT)
    from cosmic_horizons_lab.data import DEMO_DATASETS

    datasets = base / "datasets"
    datasets.mkdir()
    for dataset_id, path in DEMO_DATASETS.items():
        shutil.copy(path, datasets / f"{dataset_id}{Path(path).suffix}")
    server = start_lab(root, base / "state", [f"--CosmicHorizons.datasets_dir={datasets}"])
    yield server
    stop_lab(server)


# ------------------------------------------------------------------ the browser


@pytest.fixture
def jp_asyncio_loop() -> Iterator[Any]:
    """pytest-jupyter's autouse loop fixture, made harmless here: these tests run no
    asyncio code, and Playwright's sync API owns the thread's running loop."""
    import asyncio

    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: the browser tests need it (scripts/setup --test installs it)")
    import playwright.sync_api as sync_api
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    page.console_messages = messages  # type: ignore[attr-defined]
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = request.node.name.replace("/", "_")
    try:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    except Exception:
        pass
    (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(messages))
    context.close()


def screenshot(page: Any, name: str, *, selector: str | None = None) -> Path:
    """Keep a picture as a test artefact (and for docs/img/)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if selector:
        page.locator(selector).first.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path))
    return path


def open_lab(page: Any, server: LabServer, path: str = "lab") -> None:
    page.goto(server.lab_url(path))
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)


def open_sidebar(page: Any, panel_id: str = "cosmic-horizons-sidebar") -> Any:
    """Bring one of our left-sidebar panels to the front (the jobs panel unless named) and return it."""
    tab = page.locator(f"li.lm-TabBar-tab[data-id='{panel_id}']")
    tab.wait_for(timeout=30_000)
    if "lm-mod-current" not in (tab.get_attribute("class") or ""):
        tab.click()
    panel = page.locator(f"#{panel_id}")
    panel.wait_for(state="visible", timeout=10_000)
    return panel


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def copy_to_docs(name: str) -> None:
    """Refresh docs/img/<name>.png from this run's artefact (only when asked: UPDATE_DOC_IMAGES=1)."""
    if os.environ.get("UPDATE_DOC_IMAGES") == "1":
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / f"{name}.png", REPO / "docs" / "img" / f"{name}.png")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ui: needs a real JupyterLab (and for the browser tests, Chromium)")
