"""The sidebar behind a real JupyterHub, in headless Chromium.

A user logs in at the hub's login page, the hub's OAuth hands them to their
single-user server under ``/user/<name>/``, and the Cosmic Horizons sidebar there
opens its event stream through the proxy and shows a job move to COMPLETED live:
URLs under the hub's prefix, hub cookies on the REST calls and the WebSocket.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from ..services import HUB_PROXY, HubServer
from .conftest import FAST_SCRIPT, open_sidebar, screenshot

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    if not HUB_PROXY.exists() or shutil.which("node") is None:
        pytest.fail("configurable-http-proxy is not installed: run scripts/setup --test")
    hub = HubServer(tmp_path_factory.mktemp("hub-ui")).start()
    yield hub
    hub.stop()


def test_the_sidebar_works_behind_the_hub(page, hub) -> None:
    token = hub.user_with_server("astro")
    (hub.root / "home" / "astro" / "fast.py").write_text(FAST_SCRIPT)
    page.goto(f"{hub.url}/hub/login?next=%2Fuser%2Fastro%2Flab%3Freset")
    page.fill("#username_input", "astro")
    page.fill("#password_input", "any")
    page.click("#login_submit")
    page.wait_for_url("**/user/astro/lab**", timeout=60_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    panel = open_sidebar(page)
    page.wait_for_function("document.querySelector('.ch-conn').dataset.state === 'open'", timeout=20_000)

    job = hub.api("POST", "/user/astro/cosmic-horizons/api/jobs/submit",
                  {"agent": "Script", "params": {"path": "fast.py"}}, token=token)
    panel.locator(f".ch-job[data-job-id='{job['id']}']").wait_for(timeout=15_000)
    page.wait_for_selector(f".ch-job[data-job-id='{job['id']}'][data-status='COMPLETED']", timeout=60_000)
    screenshot(page, "hub-sidebar", selector="#cosmic-horizons-sidebar")
    errors = [m for m in page.console_messages if m.startswith(("error", "pageerror")) and "cosmic" in m.lower()]
    assert errors == [], errors
