"""Prometheus metrics on jupyter-server's own /metrics endpoint."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families


async def _scrape(jp_fetch) -> dict[tuple[str, tuple], float]:
    resp = await jp_fetch("metrics")
    out = {}
    for family in text_string_to_metric_families(resp.body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_lifecycle_queue_latency_and_staging_metrics(api, lab, jp_fetch, script, datasets_dir):
    before = await _scrape(jp_fetch)
    completed = ("cosmic_horizons_job_transitions_total", (("type", "job.completed"),))
    latency = ("cosmic_horizons_submission_latency_seconds_count", (("endpoint", "jobs/submit"),))
    staged = ("cosmic_horizons_staging_bytes_total", (("target", "tacc_scratch"),))

    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script("pass\n")}})
    await api.wait_for(job["id"])
    (datasets_dir / "blob.h5").write_bytes(b"x" * 300_000)
    _, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": "blob"})
    for _ in range(200):
        _, status, _ = await api.get("jobs/dataset/blob/staging-status")
        if status["status"] == "completed":
            break
        import asyncio

        await asyncio.sleep(0.05)

    after = await _scrape(jp_fetch)
    assert after[completed] == before.get(completed, 0) + 1
    assert after[latency] == before.get(latency, 0) + 1
    assert after[staged] == before.get(staged, 0) + 300_000
    assert after[("cosmic_horizons_jobs", (("status", "RUNNING"),))] == 0
    assert ("cosmic_horizons_event_delivery_lag_seconds_count", ()) in after
    body = (await jp_fetch("metrics")).body.decode()
    assert re.search(r"^# HELP cosmic_horizons_gpu_utilization_percent", body, re.M)  # no GPU here: no samples
