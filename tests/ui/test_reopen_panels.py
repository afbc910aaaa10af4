"""Reopening a notebook whose outputs hold our live panels, in headless Chromium (issue 13).

A notebook shows a job's progress panel, the job queue, and, as a control, an ipywidgets
slider (not ours). It is run, saved, and reopened twice: first while its kernel still
runs (our panels must render live again), then after the kernel was shut down. Then
JupyterLab's widget renderer writes "Error displaying widget: model not found" for the
slider (the upstream behaviour this guards against, seen here so we know the dead-model
path really ran), while each of our panels shows its last state in words with a hint to
re-run the cell, and logs nothing.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from .conftest import screenshot
from .test_notebook_widgets import open_notebook, run_all

pytestmark = pytest.mark.ui

PANEL_MIME = "application/vnd.cosmic-horizons.panel+json"
UPSTREAM_ERROR = "Error displaying widget: model not found"

CELLS = [
    "from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()",
    'job = lab.submit("Script", params={"path": "fast.py"})\njob',
    "queue = lab.queue()\nqueue",
    "import ipywidgets\nslider = ipywidgets.IntSlider(3)\nslider",
]


def _jupyter(server, method: str, path: str) -> object:
    req = urllib.request.Request(f"{server.url}api/{path}", method=method)
    req.add_header("Authorization", f"token {server.token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read()
    return json.loads(text) if text else None


def _saved_panels(server, name: str) -> list[dict]:
    nb = json.loads((server.root / f"{name}.ipynb").read_text())
    return [out["data"][PANEL_MIME] for cell in nb["cells"] for out in cell.get("outputs", [])
            if PANEL_MIME in out.get("data", {})]


def _reopen(page, server, name: str) -> None:
    page.console_messages.clear()
    page.goto(server.lab_url(f"lab/tree/{name}.ipynb"))
    page.wait_for_selector(".jp-Notebook", timeout=60_000)


def _not_dirty(page) -> bool:
    return page.locator(".jp-Notebook").first.evaluate(
        "() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')")


def test_reopened_panels_live_then_in_words(page, lab_server) -> None:
    name = "reopen"
    open_notebook(page, lab_server, name, CELLS)
    run_all(page, len(CELLS))
    progress = page.locator(".chw-progress").first
    page.wait_for_selector(".chw-progress[data-status='COMPLETED']", timeout=60_000)
    job_id = progress.get_attribute("data-job-id")
    assert job_id
    page.wait_for_selector(f".chw-queue tr[data-job-id='{job_id}'][data-status='COMPLETED']", timeout=30_000)
    page.wait_for_selector(".widget-slider", timeout=30_000)
    # While live, the saved summary follows the panel: saved now, it holds the final state.
    page.locator(".jp-Notebook").first.click()
    page.keyboard.press("Control+s")
    page.wait_for_function(
        "() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')", timeout=30_000)
    saved = {p["kind"]: p for p in _saved_panels(lab_server, name)}
    assert set(saved) == {"JobProgress", "JobQueue"}, saved
    assert saved["JobProgress"]["lines"][0] == f"Job {job_id[:8]} Script — COMPLETED, 100 %", saved
    assert saved["JobQueue"]["lines"][0].startswith("Job queue: "), saved
    assert any(line.startswith(f"Job {job_id[:8]} Script — COMPLETED") for line in saved["JobQueue"]["lines"])

    # 1. Reopened while the kernel still runs: the panels are live again, the notebook unchanged.
    _reopen(page, lab_server, name)
    page.wait_for_selector(f".chw-progress[data-job-id='{job_id}'][data-status='COMPLETED']", timeout=60_000)
    page.wait_for_selector(f".chw-queue tr[data-job-id='{job_id}']", timeout=30_000)
    assert page.locator(".ch-panel-summary[data-state='live']").count() == 2
    assert page.locator(".ch-panel-summary[data-state='saved']").count() == 0
    page.wait_for_timeout(500)
    assert _not_dirty(page)

    # 2. The kernel shut down, then reopened (JupyterLab starts a new kernel): no model exists.
    sessions = [s for s in _jupyter(lab_server, "GET", "sessions") if s["path"].endswith(f"{name}.ipynb")]
    assert sessions
    for s in sessions:
        _jupyter(lab_server, "DELETE", f"sessions/{s['id']}")
    _reopen(page, lab_server, name)
    # The control: the upstream renderer reports the slider's model as missing...
    page.wait_for_selector(f".jp-OutputArea-output:has-text('{UPSTREAM_ERROR}')", timeout=60_000)
    # ... while each of ours shows its last state in words, with the hint.
    page.wait_for_function("() => document.querySelectorAll(\".ch-panel-summary[data-state='saved']\").length === 2",
                           timeout=30_000)
    outputs = page.locator(".jp-OutputArea-output")
    texts = [outputs.nth(i).inner_text() for i in range(outputs.count())]
    ours = [t for t in texts if "re-run the cell for the live panel" in t]
    assert len(ours) == 2, texts
    assert any(f"Job {job_id[:8]} Script — COMPLETED, 100 %" in t for t in ours), ours
    assert any(t.startswith("Job queue: ") and job_id[:8] in t for t in ours), ours
    assert all(UPSTREAM_ERROR not in t and "Loading widget" not in t for t in ours), ours
    assert sum(UPSTREAM_ERROR in t for t in texts) == 1, texts  # the slider's only
    assert page.locator(".chw-progress, .chw-queue").count() == 0
    errors = [m for m in page.console_messages if "model not found" in m]
    assert len(errors) <= 1, errors  # at most the slider's; none from our outputs
    assert _not_dirty(page)
    screenshot(page, "reopened-panels", selector=".jp-Notebook")


# ------------------------------------------------------------ the kernel side, without a browser
@pytest.fixture
def fake_lab():
    from cosmic_horizons_lab.notebook.lab import Lab

    from .test_widgets import FakeClient

    client = FakeClient()
    lab = Lab(client=client, update_interval=0.05)
    yield lab, client
    lab.close()


def test_a_panels_display_data_carries_its_summary_which_follows_it(fake_lab) -> None:
    from .test_widgets import capture, settle

    lab, client = fake_lab
    job = lab.job("job0001")
    data, _ = job._repr_mimebundle_()
    view = data["application/vnd.jupyter.widget-view+json"]
    panel = data[PANEL_MIME]
    assert panel["model_id"] == view["model_id"] == job.widget().model_id and panel["kind"] == "JobProgress"
    assert panel["lines"][0].startswith(f"Job job0001 {job.record['agent']}")
    assert "re-run the cell" in data["text/html"] and "<script" not in data["text/html"]
    settle(lab)
    sent = capture(job.widget())
    client.emit("job0001", "job.completed", status="COMPLETED", progress=1.0)
    lab.pump.flush()
    assert job.widget().panel_summary[0].endswith("— COMPLETED, 100 %")
    assert len(sent) == 1 and "panel_summary" in sent[0]["data"]["state"]  # one message, with the record
