"""The usage charts in a real JupyterLab: ``lab.usage()`` in a notebook and the sidebar's Usage
section draw what the server's usage endpoints answer (bars per period, a runtime chart per agent)."""

from __future__ import annotations

import time

import pytest

from .conftest import open_sidebar, screenshot
from .test_notebook_widgets import open_notebook, run_all

pytestmark = pytest.mark.ui

CELLS = ["from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()\nusage = lab.usage('week')\nusage"]


def _finished_job(server) -> dict:
    job = server.request("POST", "jobs/submit", {"agent": "Script", "params": {"path": "fast.py"}})
    deadline = time.monotonic() + 60
    while job["status"] not in ("COMPLETED", "FAILED", "CANCELLED"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = server.request("GET", f"jobs/{job['id']}")
    return job


def _until_exported(server) -> dict:
    """The server's usage figures once its export holds a finished job (the export may lag the store
    by ``analytics_freshness``, 30 s by default)."""
    deadline = time.monotonic() + 90
    while True:
        user = server.request("GET", "usage/agents")["user"]
        account = server.request("GET", f"usage/accounts/{user}")
        if account["totals"]["completed"] >= 1:
            return account
        assert time.monotonic() < deadline, account
        time.sleep(1)


def _bars(page, scope: str) -> list[dict]:
    return page.evaluate(f"""() => [...document.querySelectorAll('{scope} rect.chu-bar')].map(
        r => ({{period: r.dataset.period, jobs: Number(r.dataset.jobs), gpuHours: Number(r.dataset.gpuHours)}}))""")


def test_the_usage_widget_and_sidebar_section_chart_the_account(page, lab_server) -> None:
    assert _finished_job(lab_server)["status"] == "COMPLETED"
    _until_exported(lab_server)
    open_notebook(page, lab_server, "usage", CELLS)
    run_all(page, len(CELLS))
    page.wait_for_selector(".chw-usage svg.chu-periods rect.chu-bar", timeout=90_000)
    agents = lab_server.request("GET", "usage/agents?period=week")
    account = lab_server.request("GET", f"usage/accounts/{agents['user']}?period=week")
    widget = _bars(page, ".chw-usage")
    # The bars are the account's periods (the server's export may have moved on by a job or two
    # since the widget asked: never fewer jobs than the widget drew).
    assert [b["period"] for b in widget] == [p["period"] for p in account["by_period"]][:len(widget)]
    assert 1 <= sum(b["jobs"] for b in widget) <= account["totals"]["jobs"]
    assert page.locator(".chw-usage svg.chu-runtime[data-agent='Script'] polyline.chu-p50").count() == 1
    screenshot(page, "widget-usage", selector=".chw-usage")

    panel = open_sidebar(page)
    panel.locator(".ch-usage summary").click()
    page.wait_for_selector("#cosmic-horizons-sidebar .ch-usage[data-state='ok'] rect.chu-bar", timeout=60_000)
    side = _bars(page, "#cosmic-horizons-sidebar .ch-usage")
    assert sum(b["jobs"] for b in side) >= sum(b["jobs"] for b in widget)
    assert "jobs" in panel.locator(".ch-usage .chu-totals").inner_text()
    # per month: a bar per month the account has jobs in
    months = len(lab_server.request("GET", f"usage/accounts/{agents['user']}?period=month")["by_period"])
    panel.locator(".ch-usage-period").select_option("month")
    page.wait_for_function(f"""() => document.querySelectorAll(
        '#cosmic-horizons-sidebar .ch-usage rect.chu-bar').length === {months}""", timeout=30_000)
    screenshot(page, "sidebar-usage", selector="#cosmic-horizons-sidebar .ch-usage")
