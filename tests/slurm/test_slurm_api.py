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


async def test_a_requeued_job_goes_back_to_queuing_with_the_reason(api, script, lab):
    """Preemption with requeue, a node failure or ``scontrol requeue``: Slurm puts a running job
    back in the queue. The job shows QUEUING again (reason ``requeued``, the restart count in
    its event) instead of RUNNING while it waits, and its progress starts over."""
    import subprocess

    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(
        "from cosmic_horizons_lab.executor import report\nimport time\nreport(progress=0.3)\ntime.sleep(300)\n",
        "long.py")}})
    running = await api.wait_for(job["id"], {"RUNNING"}, timeout=60)
    for _ in range(100):  # the executor's progress record has been read
        _, now, _ = await api.get(f"jobs/{job['id']}")
        if now["progress"] > 0:
            break
        await asyncio.sleep(0.1)
    assert now["progress"] == pytest.approx(0.3)
    subprocess.run(["scontrol", "requeue", running["backend_job_id"]], check=True, capture_output=True)
    back = await api.wait_for(job["id"], {"QUEUING"}, timeout=30)
    assert back["reason"] == "requeued" and back["progress"] == 0.0
    _, ev, _ = await api.get(f"jobs/{job['id']}/events")
    requeued = [e for e in ev["events"] if e["type"] == "job.queuing"][-1]
    assert requeued["payload"]["restarts"] == 1 and requeued["payload"]["slurm_state"].startswith("PENDING")
    types = [e["type"] for e in ev["events"]]
    assert types.index("job.running") < len(types) - 1 - types[::-1].index("job.queuing")
    code, _, _ = await api.delete(f"jobs/{job['id']}")  # Slurm holds it ~2 min before the rerun
    assert code == 200
    assert (await api.wait_for(job["id"], timeout=60))["status"] == "CANCELLED"


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



def test_a_restarted_server_reconciles_its_slurm_jobs(slurm_cluster, tmp_path):
    from ..services import LabServer, write_script

    root = tmp_path / "root"
    root.mkdir()
    write_script(root, "nap.py", "import time\ntime.sleep(4)\nresult = 'slept'\n")
    first = LabServer(root, config={"backend": "slurm", "poll_interval": 0.5}).start()
    client = first.client()
    job = client.submit("Script", params={"path": "nap.py"})
    client.wait(job["id"], statuses={"RUNNING"}, timeout=90)
    first.kill()
    second = LabServer(root, config={"backend": "slurm", "poll_interval": 0.5})
    second.port = first.port
    second.start()
    try:
        done = second.client().wait(job["id"], timeout=90)
        assert done["status"] == "COMPLETED" and done["result"]["result"] == "slept", done
        assert [e["type"] for e in second.client().events(job["id"])].count("job.completed") == 1
    finally:
        second.stop()


@pytest.fixture
def interpreter_for_everyone():
    """Let other Unix users run this interpreter, as on a hub where every user's server shares one
    Python install: here it may live under root's home (pyenv), so grant traverse (x) on the way."""
    import os
    import sys
    from pathlib import Path

    changed = []
    for parent in Path(os.path.realpath(sys.executable)).parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
            changed.append((parent, mode))
    yield
    for parent, mode in changed:
        parent.chmod(mode)


def test_two_users_servers_on_one_database_are_isolated_and_slurm_agrees(
    slurm_cluster, postgres, shared_base, interpreter_for_everyone
):
    """Each user's single-user server runs as that Unix user, on a shared PostgreSQL."""
    import subprocess

    from cosmic_horizons_lab.notebook.client import ApiError

    from ..services import LabServer, write_script

    db = postgres.database()
    servers = {}
    try:
        for user in ("chlalice", "chlbob"):
            root = shared_base / f"api-{user}"
            root.mkdir()
            write_script(root, "nap.py", "import time\ntime.sleep(120)\n")
            servers[user] = LabServer(root, db_url=db, run_as=user,
                                      config={"backend": "slurm", "poll_interval": 0.5}).start()
        alice, bob = servers["chlalice"].client(), servers["chlbob"].client()
        job = alice.submit("Script", params={"path": "nap.py"})
        running = alice.wait(job["id"], statuses={"RUNNING"}, timeout=90)
        assert running["user"] == "chlalice"
        for call in (lambda: bob.job(job["id"]), lambda: bob.cancel(job["id"])):
            try:
                call()
                raise AssertionError("bob's server let him see or touch alice's job")
            except ApiError as err:
                assert err.status == 404
        assert bob.history()["total"] == 0
        # Slurm itself refuses bob too.
        res = subprocess.run(["runuser", "-u", "chlbob", "--", "scancel", running["backend_job_id"]],
                             capture_output=True, text=True)
        assert res.returncode != 0 or "denied" in (res.stderr + res.stdout).lower(), res
        assert alice.job(job["id"])["status"] == "RUNNING"
        assert alice.cancel(job["id"])["status"] in ("CANCELLED", "RUNNING")
        assert alice.wait(job["id"], timeout=90)["status"] == "CANCELLED"
    finally:
        for server in servers.values():
            server.stop()
