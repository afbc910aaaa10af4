"""The progress panel's live chart of the job's own resource samples, and the heatmap's GPUs per
node, in a real notebook in headless Chromium (issue 15)."""

from __future__ import annotations

import socket
import time

import pytest

from .conftest import open_sidebar, screenshot
from .test_notebook_widgets import open_notebook, run_all

pytestmark = pytest.mark.ui

BURN = """
import time
t0 = time.time()
while time.time() - t0 < 12.0:
    pass
"""

CELLS = [
    'from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()\njob = lab.submit("Script", params={"path": "burn.py"})\njob',
    "gpus = lab.gpus()\ngpus",
]

POINTS = "el => (el.getAttribute('points') || '').trim().split(/\\s+/).filter(Boolean).length"


def test_the_progress_panel_charts_the_jobs_own_series_live(page, lab_server) -> None:
    (lab_server.root / "burn.py").write_text(BURN)
    open_notebook(page, lab_server, "resources", CELLS)
    run_all(page, len(CELLS))
    # While the job runs, the chart already has points (the kernel polls jobs/{id}/resources).
    page.wait_for_selector(".chw-progress[data-status='RUNNING'] .chw-resources[data-kind='cpu']", timeout=60_000)
    page.wait_for_function(
        "() => { const p = document.querySelector(\".chw-progress[data-status='RUNNING'] .chw-resources\");"
        " return p && Number(p.dataset.points) >= 2; }", timeout=30_000)
    page.wait_for_selector(".chw-progress[data-status='COMPLETED']", timeout=60_000)
    chart = page.locator(".chw-progress .chw-resources").first
    job_id = page.locator(".chw-progress").first.get_attribute("data-job-id")
    # after the end the kernel reads the series once more: the chart then holds every sample served
    # (how many depends on the machine's load: a 12 s burn sampled about once a second)
    deadline = time.monotonic() + 30
    while True:
        served = lab_server.request("GET", f"jobs/{job_id}/resources?limit=10000")["samples"]
        if int(chart.get_attribute("data-points") or 0) == len({s["ts"] for s in served}) >= 3:
            break
        assert time.monotonic() < deadline, (chart.get_attribute("data-points"), len(served))
        time.sleep(0.5)
    assert int(chart.get_attribute("data-points")) == len({s["ts"] for s in served})
    assert chart.locator("polyline[data-series='util']").evaluate(POINTS) == len(served)
    assert chart.locator("polyline[data-series='mem']").evaluate(POINTS) == len(served)
    text = chart.inner_text()
    assert "CPU" in text and "RSS" in text and socket.gethostname() in text, text
    screenshot(page, "widget-progress-resources", selector=".chw-progress")

    # The heatmap lists this node, with the job on it (its CPU: this machine has no GPU).
    node = page.locator(f".chw-heatmap .chw-node[data-host='{socket.gethostname()}']")
    node.wait_for(timeout=30_000)
    assert node.locator(f".chw-node-gpu[data-job-id='{job_id}']").count() == 1
    screenshot(page, "widget-heatmap-nodes", selector=".chw-heatmap")

    # And in the sidebar, under its heatmap: the same node and job.
    open_sidebar(page)
    sidebar_node = page.locator(f"#cosmic-horizons-sidebar .ch-nodes .chw-node[data-host='{socket.gethostname()}']")
    sidebar_node.wait_for(timeout=30_000)
    assert sidebar_node.locator(f".chw-node-gpu[data-job-id='{job_id}']").count() == 1
