"""The same API, events and outputs with ``backend = "slurm"``: a user changes configuration, nothing else."""

from __future__ import annotations

import asyncio

import pytest

QUICK = "from cosmic_horizons_lab.executor import report\nreport(progress=0.5, visibilities_processed=11)\nresult = 'ok'\n"
FAILING = "import sys\nsys.exit(3)\n"


@pytest.fixture
def lab_config(slurm_cluster):
    return {"backend": "slurm", "poll_interval": 0.5}


async def test_a_job_runs_on_slurm_through_the_api(api, script):
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(QUICK), "gpu_count": 1}})
    done = await api.wait_for(job["id"], timeout=60)
    assert done["status"] == "COMPLETED", done
    assert done["backend"] == "slurm" and done["backend_job_id"].isdigit()
    assert done["metrics"]["visibilities_processed"] == 11
    assert done["result"] == {"script": "job.py", "result": "ok"}
    _, ev, _ = await api.get(f"jobs/{job['id']}/events")
    types = [e["type"] for e in ev["events"]]
    assert types[0] == "job.submitted" and types[-1] == "job.completed" and "job.queuing" in types
    code, res, _ = await api.get("jobs/resources/available")
    assert res["backend"] == "slurm" and sum(p["total"] for p in res["pools"]) >= 2


async def test_exit_code_and_cancel_on_slurm(api, script):
    _, bad, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(FAILING, "bad.py")}})
    _, slow, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script("import time\ntime.sleep(300)\n", "slow.py")}})
    failed = await api.wait_for(bad["id"], timeout=60)
    assert failed["status"] == "FAILED" and "3" in (failed["error"] or ""), failed
    await api.wait_for(slow["id"], {"RUNNING"}, timeout=60)
    code, cancelled, _ = await api.delete(f"jobs/{slow['id']}")
    assert code == 200
    done = await api.wait_for(slow["id"], timeout=60)
    assert done["status"] == "CANCELLED"


async def test_a_batch_becomes_a_job_array_with_its_parallel_limit(api, script):
    path = script("import time\nt0 = time.time()\ntime.sleep(2)\nresult = [t0, time.time()]\n", "nap.py")
    _, batch, _ = await api.post(
        "jobs/submit-batch", {"jobs": [{"agent": "Script", "params": {"path": path}} for _ in range(3)], "parallelLimit": 1}
    )
    jobs = [await api.wait_for(j["id"], {"QUEUING", "RUNNING", "COMPLETED"}, timeout=30) for j in batch["jobs"]]
    array_ids = {j["backend_job_id"].split("_")[0] for j in jobs}
    assert len(array_ids) == 1 and all("_" in j["backend_job_id"] for j in jobs), [j["backend_job_id"] for j in jobs]
    done = [await api.wait_for(j["id"], timeout=90) for j in batch["jobs"]]
    assert all(d["status"] == "COMPLETED" for d in done), done
    spans = sorted(d["result"]["result"] for d in done)  # the scripts' own clocks
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, "elements of a %1 array overlapped"


async def test_pipeline_uses_afterok_and_a_failed_parent_cancels_its_children(api, script):
    ok, bad = script(QUICK, "ok.py"), script(FAILING, "bad.py")
    _, pipe, _ = await api.post("pipelines", {"stages": [
        {"name": "cal", "agent": "Script", "params": {"path": ok}},
        {"name": "img", "agent": "Script", "params": {"path": ok}, "depends_on": ["cal"]},
    ]})
    img = await api.wait_for(pipe["stages"]["img"], timeout=90)
    cal = await api.wait_for(pipe["stages"]["cal"], timeout=10)
    assert img["status"] == cal["status"] == "COMPLETED"
    assert img["started_at"] >= cal["completed_at"]

    _, pipe, _ = await api.post("pipelines", {"stages": [
        {"name": "cal", "agent": "Script", "params": {"path": bad}},
        {"name": "img", "agent": "Script", "params": {"path": ok}, "depends_on": ["cal"]},
        {"name": "find", "agent": "Script", "params": {"path": ok}, "depends_on": ["img"]},
    ]})
    for stage in ("img", "find"):
        done = await api.wait_for(pipe["stages"][stage], timeout=90)
        assert done["status"] == "CANCELLED" and done["reason"] == "dependency_failed", done


async def test_controller_down_keeps_submissions_queued_then_they_run(api, script, slurm_cluster):
    slurm_cluster.ctld_stop()
    try:
        _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(QUICK)}})
        await asyncio.sleep(3)
        code, still, _ = await api.get(f"jobs/{job['id']}")
        assert still["status"] == "QUEUED"
        code, health, _ = await api.get("health")
        assert health["status"] == "degraded" and not health["backend"]["ok"]
    finally:
        slurm_cluster.ctld_start()
    done = await api.wait_for(job["id"], timeout=120)
    assert done["status"] == "COMPLETED"
    code, health, _ = await api.get("health")
    assert health["status"] == "ok"
