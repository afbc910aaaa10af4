"""The notebook widgets in a real notebook, in headless Chromium.

A notebook run top to bottom shows a JobQueue and a JobProgress that follow a
job to COMPLETED live (updates come from the kernel's background threads over
the comm channel), and a GPU heatmap in its "no GPU" state.
"""

from __future__ import annotations

import json

import pytest

from .conftest import copy_to_docs, open_sidebar, screenshot

pytestmark = pytest.mark.ui

CELLS = [
    "from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()\nlab",
    "queue = lab.queue()\nqueue",
    'job = lab.submit("Script", params={"path": "fast.py"})\njob',
    "gpus = lab.gpus()\ngpus",
]

WATCH = """
() => {
  window.__seen = [];
  new MutationObserver(records => {
    for (const r of records) {
      const el = r.target;
      if (el.classList && el.classList.contains('chw-progress')) {
        window.__seen.push(el.dataset.status);
      }
    }
  }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ['data-status']});
}
"""


def open_notebook(page, server, name: str, cells) -> None:
    """Write ``<name>.ipynb`` with these code cells under the server root and open it in Lab."""
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                   "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (server.root / f"{name}.ipynb").write_text(json.dumps(nb))
    page.goto(server.lab_url(f"lab/tree/{name}.ipynb"))
    page.wait_for_selector(".jp-Notebook", timeout=60_000)


def run_all(page, n_cells: int) -> None:
    """Wait for the kernel to be idle, then run every cell (Shift+Enter from the first)."""
    # The execution indicator says "idle" before any kernel exists: wait for the kernel's own idle.
    page.wait_for_function(
        """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
                 .some(e => /ipykernel\\) \\| Idle/.test(e.textContent))""",
        timeout=60_000,
    )
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputPrompt").click()
    for _ in range(n_cells):
        page.keyboard.press("Shift+Enter")


def test_queue_and_progress_render_and_update_live(page, lab_server) -> None:
    open_notebook(page, lab_server, "widgets", CELLS)
    page.evaluate(WATCH)
    run_all(page, len(CELLS))
    progress = page.locator(".chw-progress").first
    progress.wait_for(timeout=60_000)
    page.wait_for_selector(".chw-progress[data-status='COMPLETED']", timeout=60_000)
    job_id = progress.get_attribute("data-job-id")
    assert job_id
    seen = page.evaluate("window.__seen")
    assert seen[-1] == "COMPLETED" and any(s != "COMPLETED" for s in seen), seen  # it moved, live
    # The key metrics in human units; the rest behind "details", rounded (issue 13).
    meta = progress.locator(".chw-meta").inner_text()
    assert "RAM 667.5 MB" in meta and "VRAM" not in meta and "beam 3.96″ × 3.41″" in meta, meta
    assert "3.9639263928719437" not in progress.inner_text()
    progress.locator(".chw-details summary").click()
    assert progress.locator(".chw-metrics dt[data-key='step']").is_visible()
    page.wait_for_selector(f".chw-queue tr[data-job-id='{job_id}'][data-status='COMPLETED']", timeout=30_000)
    assert lab_server.request("GET", f"jobs/{job_id}")["status"] == "COMPLETED"
    # The GPU heatmap: this machine has no GPU, and says so.
    page.wait_for_selector(".chw-heatmap[data-state='none']", timeout=30_000)
    assert "No GPU on this server" in page.locator(".chw-heatmap .chw-nogpu").inner_text()
    screenshot(page, "widget-progress", selector=".chw-progress")
    screenshot(page, "widget-queue", selector=".chw-queue")
    screenshot(page, "widget-heatmap-nogpu", selector=".chw-heatmap")
    open_sidebar(page)  # the same job, in the sidebar beside the notebook
    page.wait_for_selector(f"#cosmic-horizons-sidebar .ch-job[data-job-id='{job_id}'][data-status='COMPLETED']",
                           timeout=20_000)
    screenshot(page, "notebook-widgets")
    for name in ("widget-progress", "widget-queue", "widget-heatmap-nogpu", "notebook-widgets"):
        copy_to_docs(name)


def test_cancel_from_the_queue_widget(page, lab_server) -> None:
    cells = [
        "from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()",
        'job = lab.submit("Script", params={"path": "slow.py"})\nqueue = lab.queue()\nqueue',
    ]
    open_notebook(page, lab_server, "cancel", cells)
    run_all(page, len(cells))
    running = page.locator(".chw-queue tr[data-status='RUNNING']").first
    running.wait_for(timeout=60_000)
    job_id = running.get_attribute("data-job-id")
    running.locator("button.chw-cancel").click()
    page.wait_for_selector(f".chw-queue tr[data-job-id='{job_id}'][data-status='CANCELLED']", timeout=30_000)
    assert lab_server.wait_status(job_id, {"CANCELLED"}, timeout=20)["status"] == "CANCELLED"


def test_pipeline_timeline_updates_live(page, lab_server) -> None:
    cells = [
        "from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()",
        """\
stage = lambda name, *parents: {"name": name, "agent": "Script", "params": {"path": "fast.py"},
                                "depends_on": list(parents)}
pipe = lab.pipeline([stage("calibrate"), stage("image-A", "calibrate"), stage("image-B", "calibrate"),
                     stage("find", "image-A", "image-B")])
pipe""",
    ]
    open_notebook(page, lab_server, "timeline", cells)
    run_all(page, len(cells))
    timeline = page.locator(".chw-timeline").first
    timeline.wait_for(timeout=60_000)
    page.wait_for_selector(".chw-timeline .chw-tl-bar[data-status='RUNNING']", timeout=30_000)  # seen live
    page.wait_for_selector(".chw-timeline[data-done='true']", timeout=60_000)
    assert page.locator(".chw-timeline .chw-tl-bar[data-status='COMPLETED']").count() == 4
    assert page.locator(".chw-timeline .chw-tl-dep").count() == 4  # calibrate→A, calibrate→B, A→find, B→find
    screenshot(page, "widget-timeline", selector=".chw-timeline")
    copy_to_docs("widget-timeline")


def test_staging_panel_follows_a_transfer(page, lab_server) -> None:
    cells = ["from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()\nlab.stage('VLA.TDEM0003.1src', force=True)"]
    open_notebook(page, lab_server, "staging", cells)
    run_all(page, len(cells))
    page.wait_for_selector(".chw-staging[data-status='completed']", timeout=60_000)
    assert "VLA.TDEM0003.1src" in page.locator(".chw-staging .chw-name").inner_text()
    assert page.locator(".chw-staging .chw-bar").evaluate("el => parseFloat(el.style.width)") == 100
    screenshot(page, "widget-staging", selector=".chw-staging")
    copy_to_docs("widget-staging")


HEATMAP_CELL = """\
import time
from datetime import datetime, timezone
from cosmic_horizons_lab.notebook.lab import Lab
from cosmic_horizons_lab.notebook.widgets import GpuHeatmap

lab = Lab()
now = time.time()
iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat()
samples = [{"ts": iso(now - 120 + k), "gpus": [
    {"index": 0, "utilization": (k * 7) % 100, "memory_used_mb": 20000 + 300 * (k % 60)},
    {"index": 1, "utilization": 95.0 if 40 < k < 90 else 3.0, "memory_used_mb": 60000}]}
    for k in range(120)]
heatmap = GpuHeatmap(lab, seconds=120, poll=False)
heatmap.update_from({"available": True, "gpus": [
    {"index": 0, "name": "NVIDIA H100", "memory_total_mb": 81559},
    {"index": 1, "name": "NVIDIA H100", "memory_total_mb": 81559}], "samples": samples})
heatmap"""


def test_gpu_heatmap_draws_samples(page, lab_server) -> None:
    """The drawing path, with recorded-style samples (this machine has no GPU to sample)."""
    open_notebook(page, lab_server, "heatmap", [HEATMAP_CELL])
    run_all(page, 1)
    page.wait_for_selector(".chw-heatmap[data-state='ok']", timeout=60_000)
    page.wait_for_timeout(300)
    assert "GPU 0" in page.locator(".chw-heatmap .chw-counts").inner_text()
    coloured = page.locator(".chw-heatmap canvas").evaluate(
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert coloured > 1000
    screenshot(page, "widget-heatmap", selector=".chw-heatmap")


def test_cancel_while_the_kernel_is_blocked_in_wait(page, lab_server) -> None:
    """The progress panel's cancel works while a cell blocks in job.wait(), and its updates keep coming."""
    cells = [
        'from cosmic_horizons_lab.notebook.lab import Lab, JobFailed\nlab = Lab()\njob = lab.submit("Script", params={"path": "slow.py"})\njob',
        "try:\n    job.wait()\nexcept JobFailed as failed:\n    print('ENDED', job.status)",
    ]
    open_notebook(page, lab_server, "blocked", cells)
    run_all(page, len(cells))
    panel = page.locator(".chw-progress").first
    page.wait_for_selector(".chw-progress[data-status='RUNNING']", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='busy']", timeout=10_000)  # wait() blocks
    panel.locator("button.chw-cancel").click()
    page.wait_for_selector(".chw-progress[data-status='CANCELLED']", timeout=30_000)
    page.wait_for_selector(".jp-OutputArea-output:has-text('ENDED CANCELLED')", timeout=30_000)
