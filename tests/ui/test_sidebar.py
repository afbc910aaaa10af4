"""The JupyterLab sidebar in headless Chromium against a real JupyterLab.

A job submitted through the API appears in the sidebar and moves to
COMPLETED without a reload; cancel from the sidebar ends a running job; after
the event stream drops, the reconnect with ``after=<last id>`` misses nothing.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import copy_to_docs, open_lab, open_sidebar, screenshot

pytestmark = pytest.mark.ui


def row(panel, job_id: str):
    return panel.locator(f".ch-job[data-job-id='{job_id}']")


def test_labextension_is_listed_ok(lab_server) -> None:
    out = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True,
                         text=True, env=lab_server.env, timeout=60)
    text = out.stdout + out.stderr
    line = next((l for l in text.splitlines() if "cosmic-horizons-lab" in l), "")
    assert "enabled" in line and "OK" in line, text


def test_sidebar_shows_a_job_move_to_completed_live(page, lab_server) -> None:
    open_lab(page, lab_server)
    panel = open_sidebar(page)
    page.wait_for_function("window.cosmicHorizonsPanel && document.querySelector('.ch-conn').dataset.state === 'open'",
                           timeout=20_000)
    job = lab_server.submit_script("fast.py")
    job_row = row(panel, job["id"])
    job_row.wait_for(timeout=15_000)
    # It is seen live in a non-terminal state first, then completes: no reload.
    page.wait_for_selector(f".ch-job[data-job-id='{job['id']}'][data-status='COMPLETED']", timeout=30_000)
    assert job_row.locator(".ch-status").inner_text() == "COMPLETED"
    assert job_row.locator(".ch-bar").evaluate("el => parseFloat(el.style.width)") == 100
    # The whole name shows at the default width (issue 13: "AlphaCa…"); outputs look like links.
    name = job_row.locator(".ch-name")
    assert name.evaluate("el => el.scrollWidth <= el.clientWidth + 1"), name.inner_text()
    # Memory in human units, and called RAM on a CPU (issue 13: it read "VRAM 667484160").
    meta = job_row.locator(".ch-meta").inner_text()
    assert "RAM 667.5 MB" in meta and "VRAM" not in meta and "667484160" not in meta, meta
    # Expanding the row shows its log tail and outputs.
    job_row.locator(".ch-job-line").click()
    page.wait_for_selector(f".ch-job[data-job-id='{job['id']}'] .ch-log:has-text('step 4 of 4')", timeout=10_000)
    output = job_row.locator(".ch-output", has_text="summary.json")
    output.wait_for(timeout=10_000)
    screenshot(page, "sidebar", selector="#cosmic-horizons-sidebar")
    copy_to_docs("sidebar")
    # An output opens in Lab (the job directory lies under the server root).
    output.click()
    page.wait_for_selector(".lm-DockPanel-tabBar .lm-TabBar-tab:has-text('summary.json')", timeout=20_000)
    server_job = lab_server.request("GET", f"jobs/{job['id']}")
    assert server_job["status"] == "COMPLETED"


def test_sidebar_is_open_on_first_launch_and_labelled(page, lab_server) -> None:
    """A new user sees where jobs appear without hunting for an unlabelled icon (issue 13)."""
    open_lab(page, lab_server)  # a fresh browser context: nothing in localStorage
    page.locator("#cosmic-horizons-sidebar").wait_for(state="visible", timeout=30_000)
    tab = page.locator("li.lm-TabBar-tab[data-id='cosmic-horizons-sidebar']")
    assert "Cosmic Horizons" in (tab.get_attribute("title") or ""), tab.get_attribute("title")
    # Closed by the user, it stays closed on the next load: only the first launch opens it.
    tab.click()
    page.locator("#cosmic-horizons-sidebar").wait_for(state="hidden", timeout=10_000)
    page.reload()
    page.wait_for_selector("li.lm-TabBar-tab[data-id='cosmic-horizons-sidebar']", timeout=60_000)
    page.wait_for_timeout(1500)
    assert not page.locator("#cosmic-horizons-sidebar").is_visible()


def test_cancel_from_the_sidebar_ends_a_running_job(page, lab_server) -> None:
    open_lab(page, lab_server)
    panel = open_sidebar(page)
    job = lab_server.submit_script("slow.py")
    page.wait_for_selector(f".ch-job[data-job-id='{job['id']}'][data-status='RUNNING']", timeout=30_000)
    row(panel, job["id"]).locator(".ch-cancel").click()
    page.wait_for_selector(f".ch-job[data-job-id='{job['id']}'][data-status='CANCELLED']", timeout=20_000)
    assert lab_server.wait_status(job["id"], {"CANCELLED"}, timeout=20)["status"] == "CANCELLED"


def test_reconnect_with_after_misses_nothing(page, lab_server) -> None:
    open_lab(page, lab_server)
    panel = open_sidebar(page)
    page.wait_for_function("document.querySelector('.ch-conn').dataset.state === 'open'", timeout=20_000)
    last_before = page.evaluate("window.cosmicHorizonsPanel.eventStream.lastId")
    page.evaluate("window.cosmicHorizonsPanel.eventStream.disconnect()")
    # While the stream is down a job is submitted and runs to the end.
    job = lab_server.submit_script("fast.py")
    lab_server.wait_status(job["id"], {"COMPLETED"}, timeout=30)
    assert row(panel, job["id"]).count() == 0
    page.evaluate("window.cosmicHorizonsPanel.eventStream.connect()")
    page.wait_for_selector(f".ch-job[data-job-id='{job['id']}'][data-status='COMPLETED']", timeout=15_000)
    assert page.evaluate("window.cosmicHorizonsPanel.eventStream.lastId") > last_before
