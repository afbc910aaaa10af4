"""The job form in headless Chromium against a real JupyterLab (issue 13, scope 2).

The form is generated from ``GET agents``; its live estimate must be the server's own
``POST jobs/optimize`` answer for the same body; a value the server refuses is shown at the
field its error names; a submission from the form appears in the jobs panel. "Run as job…"
in the file browser opens the form filled in for a ``.py`` file.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from .conftest import copy_to_docs, open_lab, open_sidebar, screenshot

pytestmark = pytest.mark.ui

DATASET = "VLA.TDEM0003.1src"


def optimize(server, body: dict[str, Any]) -> dict[str, Any]:
    """POST jobs/optimize with a long timeout: its first dataset validation runs the science worker."""
    req = urllib.request.Request(server.api + "jobs/optimize", data=json.dumps(body).encode(), method="POST")
    req.add_header("Authorization", f"token {server.token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=180) as resp:
        return json.loads(resp.read())


def open_form(page):
    page.set_default_timeout(60_000)  # two cores shared with other suites: the first GET datasets is slow
    open_sidebar(page).locator(".ch-new-job").click()
    form = page.locator("#cosmic-horizons-form")
    form.wait_for(state="visible", timeout=10_000)
    form.locator(".ch-field[data-field='agent'] select").wait_for(timeout=20_000)
    return form


def field(form, name: str):
    return form.locator(f".ch-field[data-field='{name}']")


def set_text(form, name: str, value: str) -> None:
    field(form, name).locator("input, textarea").fill(value)


def test_form_estimate_field_error_and_submit(page, lab_server) -> None:
    open_lab(page, lab_server)
    form = open_form(page)
    # One option per agent the server publishes, and the chosen agent's own parameters.
    agents = lab_server.request("GET", "agents")["agents"]
    options = form.locator(".ch-field[data-field='agent'] option").all_inner_texts()
    assert options == [a["name"] for a in agents]
    field(form, "agent").locator("select").select_option("AlphaCal")
    alphacal = next(a for a in agents if a["name"] == "AlphaCal")
    for param in alphacal["params_schema"]["properties"]:
        field(form, f"params.{param}").wait_for(timeout=5_000)
    field(form, "dataset_id").locator("select").select_option(DATASET)
    field(form, "params.rfi_strategy").locator("select").select_option(label="high_sensitivity")
    set_text(form, "params.gpu_count", "0")
    set_text(form, "params.max_runtime", "2h")

    # The live estimate is what jobs/optimize answers for this very body.
    body = {"agent": "AlphaCal", "dataset_id": DATASET,
            "params": {"rfi_strategy": "high_sensitivity", "gpu_count": 0, "max_runtime": "2h"}}
    expected = optimize(lab_server, body)
    page.wait_for_function("() => { const f = window.cosmicHorizonsForm; return f && f.lastEstimate"
                           " && document.querySelector('#cosmic-horizons-form .ch-estimate').dataset.state === 'ok'; }",
                           timeout=120_000)
    shown = form.locator(".ch-estimate").inner_text()
    assert expected["estimated_su"] is not None, expected
    assert f"{expected['estimated_su']:.2f} SU" in shown and f"${expected['estimated_cost_usd']:.2f}" in shown, shown
    tips = form.locator(".ch-tips li").all_inner_texts()
    assert tips == [t["message"] for t in expected["tips"]]
    screenshot(page, "job-form", selector="#cosmic-horizons-form")
    copy_to_docs("job-form")

    # A value the server refuses: its message appears at that field, from the server's answer.
    set_text(form, "params.max_runtime", "soonish")
    with pytest.raises(urllib.error.HTTPError) as refused:
        optimize(lab_server, {**body, "params": {**body["params"], "max_runtime": "soonish"}})
    assert refused.value.code == 422
    error = field(form, "params.max_runtime").locator(".ch-field-error")
    error.wait_for(state="visible", timeout=15_000)
    assert "soonish" in error.inner_text()
    # Submitting it anyway is refused the same way, and nothing is queued.
    before = lab_server.request("GET", "jobs/history/list?page_size=200")["total"]
    form.locator(".ch-submit").click()
    page.wait_for_timeout(500)
    error.wait_for(state="visible", timeout=10_000)
    assert lab_server.request("GET", "jobs/history/list?page_size=200")["total"] == before
    screenshot(page, "job-form-error", selector="#cosmic-horizons-form")

    # Fixed, submitted: the job is the server's, and shows in the jobs panel.
    set_text(form, "params.max_runtime", "2h")
    form.locator(".ch-submit").click()
    message = form.locator(".ch-form-message[data-state='ok']")
    message.wait_for(state="attached", timeout=30_000)
    job_id = message.inner_text().split()[1]
    job = lab_server.request("GET", f"jobs/{job_id}")
    assert job["agent"] == "AlphaCal" and job["dataset_id"] == DATASET
    assert job["params"]["rfi_strategy"] == "high_sensitivity" and job["params"]["max_runtime"] == "2h"
    page.locator(f"#cosmic-horizons-sidebar .ch-job[data-job-id='{job_id}']").wait_for(timeout=15_000)
    try:  # the science is not under test here: free the two cores
        lab_server.request("DELETE", f"jobs/{job_id}")
    except urllib.error.HTTPError:
        pass


def open_run_as_job(page, lab_server, name: str):
    """Lab opened, ``name`` right-clicked in the file browser, "Run as job…": the form, filled in."""
    open_lab(page, lab_server)
    page.locator("li.lm-TabBar-tab[data-id='filebrowser']").click()
    item = page.locator(".jp-DirListing-item[data-file-type='python']", has_text=name)
    item.wait_for(timeout=20_000)
    item.click(button="right")
    page.locator(".lm-Menu-item:has-text('Run as job…')").click()
    form = page.locator("#cosmic-horizons-form")
    form.wait_for(state="visible", timeout=10_000)
    page.wait_for_function("() => document.querySelector(\"#cosmic-horizons-form .ch-field[data-field='params.path'] input\")"
                           f"?.value === '{name}'", timeout=15_000)
    return form


def test_run_as_job_from_the_file_browser(page, lab_server) -> None:
    (lab_server.root / "runme.py").write_text("print('ran from the form')\nresult = 42\n")
    form = open_run_as_job(page, lab_server, "runme.py")
    assert field(form, "agent").locator("select").input_value() == "Script"
    screenshot(page, "run-as-job", selector="#cosmic-horizons-form")
    copy_to_docs("run-as-job")
    form.locator(".ch-submit").click()
    message = form.locator(".ch-form-message[data-state='ok']")
    message.wait_for(state="attached", timeout=30_000)
    job_id = message.inner_text().split()[1]
    job = lab_server.wait_status(job_id, {"COMPLETED", "FAILED"}, timeout=60)
    assert job["status"] == "COMPLETED" and job["params"]["path"] == "runme.py"
    page.locator(f"#cosmic-horizons-sidebar .ch-job[data-job-id='{job_id}'][data-status='COMPLETED']").wait_for(
        timeout=20_000)
