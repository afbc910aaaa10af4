"""Usage analytics and alerts for jobs that ran on the Slurm test cluster (issue 15's "done when").

The truth is Slurm's: ``sacct`` says which of the jobs completed and which failed, and its
``ElapsedRaw`` bounds their run times. The usage account (DuckDB over the exported Parquet) must
count those jobs and their success rate as Slurm does, and the failure-rate rule must fire once,
as an ``alert.failure_rate`` event on the user's stream and a signed webhook.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from cosmic_horizons_lab.server.webhooks import sign

from ..test_alerts import receiver  # noqa: F401  (the fixture: a real webhook receiver)
from ..test_event_stream import _read_events
from .conftest import sh, wait_for_accounting

OFF = {"queue_wait": None, "budget": None, "gpu_idle": None}


@pytest.fixture
def lab_config(slurm_cluster, receiver):
    return {"backend": "slurm", "poll_interval": 0.5, "analytics_freshness": 0.0,
            "alert_rules": {**OFF, "failure_rate": {"min_jobs": 3, "threshold": 0.5, "window_minutes": 60}},
            "alert_webhook_url": receiver.url, "alert_interval": 60, "webhook_backoff_seconds": 0.2}


async def test_slurm_jobs_reach_the_usage_account_and_the_failure_rate_alert(api, jp_ws_fetch, script, receiver):
    ws = await jp_ws_fetch("cosmic-horizons", "api", "events", params={"after": 0})
    ok = script("print('fine')\n", "fine.py")
    bad = script("raise SystemExit(3)\n", "broken.py")
    ids = []
    for path in (ok, bad, bad):
        code, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}})
        assert code == 201, job
        ids.append(job["id"])
    done = [await api.wait_for(i, timeout=120) for i in ids]
    slurm_ids = [d["backend_job_id"] for d in done]
    states = [(await wait_for_accounting(s)).split()[0] for s in slurm_ids]
    assert states == ["COMPLETED", "FAILED", "FAILED"], states  # Slurm's word, not ours
    assert [d["status"] for d in done] == states

    # the alert: two of three failed (0.67 > 0.5), fired once, on the stream and as a webhook
    events = await _read_events(ws, lambda ev: any(e["type"] == "alert.failure_rate" for e in ev), timeout=30)
    alerts = [e for e in events if e["type"] == "alert.failure_rate"]
    assert len(alerts) == 1 and alerts[0]["payload"]["failed"] == 2
    assert alerts[0]["payload"]["failure_rate"] == pytest.approx(2 / 3, rel=1e-3)
    deadline = time.monotonic() + 30
    while not any(h["x-cosmic-event"] == "alert.failure_rate" for h, _ in receiver.received):
        assert time.monotonic() < deadline, "no alert webhook"
        await asyncio.sleep(0.1)
    headers, raw = next((h, r) for h, r in receiver.received if h["x-cosmic-event"] == "alert.failure_rate")
    _, secret, _ = await api.get("webhooks/secret")
    assert headers["x-cosmic-signature"] == sign(secret["secret"], raw)
    assert json.loads(raw)["alert"]["alert_id"] == alerts[0]["payload"]["alert_id"]

    # the account: what sacct says, through the Parquet export and DuckDB
    code, body, _ = await api.get("usage/accounts/astro", params={"period": "day"})
    assert code == 200, body
    totals = body["totals"]
    assert (totals["jobs"], totals["completed"], totals["failed"]) == (3, states.count("COMPLETED"),
                                                                       states.count("FAILED"))
    assert totals["success_rate"] == pytest.approx(1 / 3)
    elapsed = sh("sacct", "-X", "--noheader", "--parsable2", "--format=ElapsedRaw",
                 f"--jobs={','.join(slurm_ids)}").stdout.split()
    # our wall time per job lies within Slurm's (rounded to seconds) and a poll or two more
    assert totals["gpu_hours"] <= (sum(int(e) for e in elapsed) + 3 * (2 + 2 * 0.5)) / 3600
    (agent,) = body["by_agent"]
    assert agent["agent"] == "Script" and agent["jobs"] == 3
