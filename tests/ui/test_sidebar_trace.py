"""A submission from the sidebar starts its job's trace (issue 16): headless Chromium against a
real JupyterLab. The request the browser really sent (as Playwright saw it leave) carries a W3C
``traceparent``, and the job the server made of it is in that trace, down to the job process."""

from __future__ import annotations

import json

import pytest

from cosmic_horizons_lab.protocol.jobdir import JOB_FILE, SPANS_FILE, job_dir
from cosmic_horizons_lab.protocol.tracecontext import parse_traceparent

from .test_job_form import open_run_as_job

pytestmark = pytest.mark.ui


def test_a_submission_from_the_sidebar_carries_a_traceparent_into_the_job(page, lab_server) -> None:
    (lab_server.root / "traced_from_ui.py").write_text("import os\nprint('TRACEPARENT', os.environ['TRACEPARENT'])\n")
    page.set_default_timeout(60_000)
    form = open_run_as_job(page, lab_server, "traced_from_ui.py")
    posted: list = []
    page.on("request", lambda r: posted.append(r) if r.method == "POST" else None)
    form.locator(".ch-submit").click()
    message = form.locator(".ch-form-message[data-state='ok']")
    message.wait_for(state="attached", timeout=30_000)
    (sent,) = [r for r in posted if r.url.split("?")[0].endswith("/jobs/submit")] or [None]
    assert sent is not None, [r.url for r in posted]
    minted = parse_traceparent(sent.headers.get("traceparent"))
    assert minted is not None and minted.sampled, sent.headers
    job_id = message.inner_text().split()[1]
    job = lab_server.wait_status(job_id, {"COMPLETED", "FAILED"}, timeout=60)
    assert job["status"] == "COMPLETED", job

    folder = job_dir(lab_server.root / "cosmic-horizons-jobs", job["user"], job_id)
    # the server's span of that request is the job's parent, in the browser's trace...
    stored = parse_traceparent(json.loads((folder / JOB_FILE).read_text())["traceparent"])
    assert stored.trace_id == minted.trace_id and stored.span_id != minted.span_id
    # ...and the job process recorded its run under it, and handed its own span to the script
    (run,) = [json.loads(line) for line in (folder / SPANS_FILE).read_text().splitlines()]
    assert (run["name"], run["trace_id"], run["parent_span_id"]) == ("executor.run", minted.trace_id, stored.span_id)
    seen = parse_traceparent((folder / "stdout.log").read_text().split("TRACEPARENT ", 1)[1].split()[0])
    assert (seen.trace_id, seen.span_id) == (minted.trace_id, run["span_id"])
