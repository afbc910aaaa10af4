"""The job API end to end, against a real server extension and a real local backend."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from cosmic_horizons_lab.data import SIMULATED_BYTES

from .services import group_alive

QUICK = """
import time
from cosmic_horizons_lab.executor import report, args
report(progress=0.25, visibilities_processed=100)
time.sleep(0.3)
report(progress=0.75, visibilities_processed=300, vram_usage=1234)
print("calibrated", args.get("target", "none"))
result = {"answer": 42}
"""
FAILING = """
print("about to fail")
raise ValueError("bad calibration table")
"""
SLOW = """
import time
from cosmic_horizons_lab.executor import report
report(progress=0.1)
time.sleep(60)
"""
SEED_PAYLOAD = {
    "agent": "AlphaCal",
    "dataset_id": "VLASS2.1.eb123456",
    "params": {"rfi_strategy": "high_sensitivity", "gpu_count": 2, "max_runtime": "04:00:00"},
    "webhook_url": "https://cosmic-horizons.org/api/webhooks/tacc",
}


def _is_utc(ts: str) -> bool:
    return ts.endswith("+00:00") or ts.endswith("Z")


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_script_job_runs_through_the_whole_lifecycle(api, script, lab):
    path = script(QUICK)
    code, job, headers = await api.post(
        "jobs/submit", {"agent": "Script", "params": {"path": path, "args": {"target": "3C286"}}, "notes": "first"},
        headers={"X-Correlation-ID": "corr-123"},
    )
    assert code == 201, job
    assert job["status"] == "QUEUED" and job["progress"] == 0.0
    assert headers["X-Correlation-ID"] == "corr-123" and job["correlation_id"] == "corr-123"
    assert _is_utc(job["created_at"])

    done = await api.wait_for(job["id"])
    assert done["status"] == "COMPLETED", done
    assert done["progress"] == 1.0
    assert done["result"] == {"script": path, "result": {"answer": 42}}
    assert done["metrics"]["visibilities_processed"] == 300 and done["metrics"]["vram_usage"] == 1234
    assert done["backend_job_id"] and done["tacc_job_id"] == done["backend_job_id"]
    assert _is_utc(done["started_at"]) and _is_utc(done["completed_at"])

    code, status, _ = await api.get(f"jobs/{job['id']}/status")
    assert code == 200 and status["status"] == "COMPLETED" and status["metrics"]["visibilities_processed"] == 300

    code, body, _ = await api.get(f"jobs/{job['id']}/events")
    types = [e["type"] for e in body["events"]]
    assert types[0] == "job.submitted" and types[-1] == "job.completed"
    assert types.index("job.queuing") < types.index("job.running") < types.index("job.completed")
    assert "job.progress" in types
    ids = [e["id"] for e in body["events"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(e["correlation_id"] == "corr-123" and _is_utc(e["ts"]) for e in body["events"])
    statuses = [e["payload"]["status"] for e in body["events"] if e["type"] != "job.progress"]
    assert statuses == ["QUEUED", "QUEUING", "RUNNING", "COMPLETED"]

    code, logs, _ = await api.get(f"jobs/{job['id']}/logs")
    assert code == 200 and "calibrated 3C286" in logs["data"]
    code, tail, _ = await api.get(f"jobs/{job['id']}/logs", params={"offset": logs["size"] - 6})
    assert tail["data"] == "3C286\n" and tail["next_offset"] == logs["size"]


async def test_outputs_are_listed_with_checksums_and_downloadable(api, script, jp_fetch):
    import hashlib

    path = script(
        "import os\nfrom pathlib import Path\n"
        "out = Path(os.environ['COSMIC_HORIZONS_JOB_DIR']) / 'outputs'\n"
        "(out / 'cal').mkdir()\n(out / 'cal' / 'gains.txt').write_text('g=1.0\\n')\n"
        "(out / 'image.bin').write_bytes(bytes(range(256)) * 40)\n"
    )
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}})
    await api.wait_for(job["id"])
    code, out, _ = await api.get(f"jobs/{job['id']}/outputs")
    assert code == 200
    files = {f["path"]: f for f in out["files"]}
    assert set(files) == {"cal/gains.txt", "image.bin"}
    blob = bytes(range(256)) * 40
    assert files["image.bin"]["size_bytes"] == len(blob)
    assert files["image.bin"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert files["image.bin"]["root_path"] == f"jobs/astro/{job['id']}/outputs/image.bin"
    resp = await jp_fetch("cosmic-horizons", "api", "jobs", job["id"], "outputs", "image.bin")
    assert resp.body == blob
    code, err, _ = await api.get(f"jobs/{job['id']}/outputs/../job.json")
    assert code == 404 and err["error"] == "not_found"


async def test_a_script_that_raises_fails_with_its_error(api, script):
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(FAILING)}})
    done = await api.wait_for(job["id"])
    assert done["status"] == "FAILED"
    assert "ValueError: bad calibration table" in done["error"]
    assert done["reason"] == "exit_code"
    _, logs, _ = await api.get(f"jobs/{job['id']}/logs")
    assert "about to fail" in logs["data"] and "Traceback" in logs["data"]
    _, ev, _ = await api.get(f"jobs/{job['id']}/events")
    assert ev["events"][-1]["type"] == "job.failed" and ev["events"][-1]["payload"]["exit_code"] == 1


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_cancel_a_running_job_then_cancel_again_is_409(api, script, work_dir):
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(SLOW)}})
    await api.wait_for(job["id"], {"RUNNING"})
    code, cancelled, _ = await api.delete(f"jobs/{job['id']}")
    assert code == 200 and cancelled["status"] == "CANCELLED", cancelled
    assert cancelled["reason"] == "cancelled"
    code, err, _ = await api.delete(f"jobs/{job['id']}")
    assert code == 409 and err["error"] == "conflict"
    _, ev, _ = await api.get(f"jobs/{job['id']}/events")
    assert ev["events"][-1]["type"] == "job.cancelled"
    assert ev["events"][-1]["payload"]["by"] == ev["events"][-1]["user"]  # who asked, kept
    # The process group is gone: SIGTERM reached the script.
    pid = json.loads((work_dir / "astro" / job["id"] / "local.json").read_text())["pid"]
    assert not group_alive(pid)


async def test_cancel_a_queued_job(api, script, lab):
    lab.orchestrator._backend_retry_at = float("inf")  # hold dispatch: the job stays QUEUED
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(SLOW)}})
    code, cancelled, _ = await api.delete(f"jobs/{job['id']}")
    assert code == 200 and cancelled["status"] == "CANCELLED" and cancelled["backend_job_id"] is None


async def test_max_runtime_is_enforced(api, script):
    _, job, _ = await api.post(
        "jobs/submit", {"agent": "Script", "params": {"path": script(SLOW), "max_runtime": "1s"}}
    )
    done = await api.wait_for(job["id"], timeout=20)
    assert done["status"] == "FAILED" and done["reason"] == "timeout"
    assert "max_runtime" in done["error"]


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_idempotency_key_returns_the_first_job(api, script):
    body = {"agent": "Script", "params": {"path": script(QUICK)}}
    c1, first, _ = await api.post("jobs/submit", body, headers={"Idempotency-Key": "k-1"})
    c2, second, _ = await api.post("jobs/submit", body, headers={"Idempotency-Key": "k-1"})
    assert (c1, c2) == (201, 200) and first["id"] == second["id"]
    results = await asyncio.gather(*[api.post("jobs/submit", body, headers={"Idempotency-Key": "k-2"}) for _ in range(8)])
    assert len({r[1]["id"] for r in results}) == 1
    assert sorted(r[0] for r in results) == [200] * 7 + [201]
    # The same key from another user is that user's own first job.
    c3, other, _ = await api.post("jobs/submit", body, headers={"Idempotency-Key": "k-1"}, user="bob")
    assert c3 == 201 and other["id"] != first["id"]
    _, page, _ = await api.get("jobs/history/list")
    assert page["total"] == 2


async def test_users_see_and_touch_only_their_own_jobs(api, script):
    _, alice_job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(SLOW)}}, user="alice")
    assert alice_job["user"] == "alice"
    for method, path in [("GET", ""), ("GET", "/status"), ("GET", "/events"), ("GET", "/logs"), ("GET", "/outputs"), ("DELETE", "")]:
        code, err, _ = await api.call(method, f"jobs/{alice_job['id']}{path}", user="bob")
        assert code == 404 and err["error"] == "not_found", (method, path, code)
    _, bobs, _ = await api.get("jobs/history/list", user="bob")
    assert bobs["total"] == 0
    _, alices, _ = await api.get("jobs/history/list", user="alice")
    assert [j["id"] for j in alices["items"]] == [alice_job["id"]]
    code, _, _ = await api.delete(f"jobs/{alice_job['id']}", user="alice")
    assert code == 200


async def test_token_requests_without_a_named_user_all_belong_to_the_owner(jp_serverapp, lab, jp_fetch, script):
    """With jupyter-server's own provider, each token request is a fresh anonymous user: still one owner."""
    from jupyter_server.auth.identity import PasswordIdentityProvider

    from .conftest import Api

    jp_serverapp.web_app.settings["identity_provider"].__class__ = PasswordIdentityProvider
    api = Api(jp_fetch)
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(QUICK)}})
    assert job["user"] == "astro"
    code, same, _ = await api.get(f"jobs/{job['id']}")
    assert code == 200 and same["id"] == job["id"]


BAD_SUBMISSIONS = [
    ({"agent": "NoSuchAgent"}, 422, "agent"),
    ({"params": {}}, 422, "agent"),
    (SEED_PAYLOAD, 422, "dataset_id"),  # AlphaCal exists; this archive has no such dataset
    ({"agent": "Script", "params": {"path": "job.py", "gpu_count": 9}}, 422, "params.gpu_count"),
    ({"agent": "Script", "params": {"path": "job.py", "gpu_count": -1}}, 422, "params.gpu_count"),
    ({"agent": "Script", "params": {"path": "job.py", "gpu_count": "2"}}, 422, "params.gpu_count"),
    ({"agent": "Script", "params": {"path": "job.py", "max_runtime": "4 hours"}}, 422, "params.max_runtime"),
    ({"agent": "Script", "params": {"path": "job.py", "max_runtime": "25:99:00"}}, 422, "params.max_runtime"),
    ({"agent": "Script", "params": {"path": "job.py"}, "priority": 11}, 422, "priority"),
    ({"agent": "Script", "params": {"path": "job.py"}, "priority": -1}, 422, "priority"),
    ({"agent": "Script", "params": {"path": "job.py"}, "colour": "red"}, 400, "colour"),
    ({"agent": "Script", "params": {"path": "job.py", "turbo": True}}, 400, "params.turbo"),
    ({"agent": "Script", "params": {}}, 422, "params.path"),
    ({"agent": "Script", "params": {"path": "../outside.py"}}, 422, "params.path"),
    ({"agent": "Script", "params": {"path": "/etc/passwd.py"}}, 422, "params.path"),
    ({"agent": "Script", "params": {"path": "missing.py"}}, 422, "params.path"),
    ({"agent": "Script", "dataset_id": "no-such-dataset", "params": {"path": "job.py"}}, 422, "dataset_id"),
    ({"agent": "Script", "params": {"path": "job.py"}, "webhook_url": "ftp://example.org/x"}, 422, "webhook_url"),
    ({"agent": "Script", "params": {"path": "job.py"}, "depends_on": ["nope"]}, 400, "depends_on"),
    ([1, 2], 400, None),
]


@pytest.mark.parametrize("body,status,field", BAD_SUBMISSIONS)
async def test_bad_submissions_are_refused_and_write_nothing(api, script, lab, body, status, field):
    script(QUICK)
    before = await lab.store.last_event_id()
    code, err, _ = await api.post("jobs/submit", body)
    assert code == status, err
    assert err["field"] == field and err["message"], err
    _, page, _ = await api.get("jobs/history/list")
    assert page["total"] == 0
    assert await lab.store.last_event_id() == before


async def test_malformed_and_oversized_bodies(api, lab):
    code, err, _ = await api.call("POST", "jobs/submit", raw_body=b"{not json")
    assert code == 400 and err["error"] == "bad_request"
    code, err, _ = await api.call("POST", "jobs/submit", raw_body=b"")
    assert code == 400
    big = json.dumps({"agent": "Script", "params": {"path": "job.py"}, "notes": "x" * (3 * 1024 * 1024)}).encode()
    code, err, _ = await api.call("POST", "jobs/submit", raw_body=big)
    assert code == 413 and err["error"] == "payload_too_large"
    assert await lab.store.last_event_id() == 0


async def test_datasets_list_the_archive_the_demo_and_the_presets(api, script, datasets_dir):
    (datasets_dir / "VLA.demo.uvfits").write_bytes(b"\0" * 2880)
    (datasets_dir / ".hidden.uvfits").write_bytes(b"\0")
    code, body, _ = await api.get("datasets")
    assert code == 200
    by_id = {d["id"]: d for d in body["datasets"]}
    assert ".hidden" not in by_id
    assert (by_id["VLA.demo"]["format"], by_id["VLA.demo"]["size_bytes"], by_id["VLA.demo"]["source"]) == ("uvfits", 2880, "archive")
    assert by_id["VLA.demo"]["shape"] is None  # zeros are not a uvfits file: listed, without a shape
    demo = by_id["VLA.TDEM0003.1src"]
    assert demo["source"] == "demo" and demo["size_bytes"] == 4_253_760
    assert demo["shape"] == {"baselines": 153, "times": 15, "channels": 64, "polarizations": 4, "visibilities": 348160}
    assert {"SIM.small", "SIM.rfi", "SIM.sky"} <= set(by_id)
    assert all(by_id[s]["size_bytes"] == SIMULATED_BYTES[s] for s in SIMULATED_BYTES)  # not 0 before generation
    code, job, _ = await api.post("jobs/submit", {"agent": "Script", "dataset_id": "VLA.demo", "params": {"path": script(QUICK)}})
    assert code == 201 and job["dataset_id"] == "VLA.demo"


async def test_a_synthetic_dataset_is_generated_by_the_job_that_needs_it(api, script, work_dir):
    reader = script(
        "import json, os, pathlib\n"
        "job = json.loads((pathlib.Path(os.environ['COSMIC_HORIZONS_JOB_DIR'])/'job.json').read_text())\n"
        "result = os.path.getsize(job['dataset']['path'])\n", "size.py")
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "dataset_id": "SIM.small", "params": {"path": reader}})
    done = await api.wait_for(job["id"], timeout=120)
    assert done["status"] == "COMPLETED", done
    generated = work_dir / ".simulated" / "SIM.small.uvfits"
    assert done["result"]["result"] == generated.stat().st_size > 100_000
    code, body, _ = await api.get("datasets")
    sim = next(d for d in body["datasets"] if d["id"] == "SIM.small")
    assert sim["shape"]["baselines"] == 171 and sim["shape"]["channels"] == 32


async def test_history_is_newest_first_and_paginated(api, script, lab):
    lab.orchestrator._backend_retry_at = float("inf")
    path = script(QUICK)
    ids = []
    for i in range(5):
        _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}})
        ids.append(job["id"])
    _, p1, _ = await api.get("jobs/history/list", params={"page": 1, "page_size": 2})
    _, p3, _ = await api.get("jobs/history/list", params={"page": 3, "page_size": 2})
    assert p1["total"] == 5 and [j["id"] for j in p1["items"]] == ids[::-1][:2]
    assert [j["id"] for j in p3["items"]] == [ids[0]]
    for params, field in [({"page": 0}, "page"), ({"page_size": 500}, "page_size"), ({"page": "x"}, "page")]:
        code, err, _ = await api.get("jobs/history/list", params=params)
        assert code == 400 and err["field"] == field


async def test_search_filters(api, script, datasets_dir):
    (datasets_dir / "A.uvfits").write_bytes(b"a")
    (datasets_dir / "B.uvfits").write_bytes(b"b")
    ok, bad = script(QUICK, "ok.py"), script(FAILING, "bad.py")
    _, a, _ = await api.post("jobs/submit", {"agent": "Script", "dataset_id": "A", "params": {"path": ok}})
    _, b, _ = await api.post("jobs/submit", {"agent": "Script", "dataset_id": "B", "params": {"path": bad}})
    await api.wait_for(a["id"])
    await api.wait_for(b["id"])
    _, res, _ = await api.get("jobs/search", params={"dataset_id": "A"})
    assert [j["id"] for j in res["items"]] == [a["id"]]
    _, res, _ = await api.get("jobs/search", params={"status": "FAILED", "agent": "Script"})
    assert [j["id"] for j in res["items"]] == [b["id"]]
    _, res, _ = await api.get("jobs/search", params={"status": "completed,failed"})
    assert res["total"] == 2
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    _, res, _ = await api.get("jobs/search", params={"from_date": future})
    assert res["total"] == 0
    _, res, _ = await api.get("jobs/search", params={"from_date": past, "to_date": future})
    assert res["total"] == 2
    code, err, _ = await api.get("jobs/search", params={"status": "DONE"})
    assert code == 400 and err["field"] == "status"
    code, err, _ = await api.get("jobs/search", params={"from_date": "yesterday"})
    assert code == 400 and err["field"] == "from_date"


@pytest.fixture
def one_slot(lab_config):
    lab_config["local_slots"] = 1


async def test_priority_orders_the_queue_fifo_within_a_priority(one_slot, api, script):
    slow = script("import time; time.sleep(0.8)", "slow.py")
    quick = script(QUICK, "quick.py")
    _, blocker, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": slow}})
    await api.wait_for(blocker["id"], {"RUNNING"})
    low1 = (await api.post("jobs/submit", {"agent": "Script", "params": {"path": quick}, "priority": 1}))[1]
    low2 = (await api.post("jobs/submit", {"agent": "Script", "params": {"path": quick}, "priority": 1}))[1]
    high = (await api.post("jobs/submit", {"agent": "Script", "params": {"path": quick}, "priority": 9}))[1]
    done = [await api.wait_for(j["id"], timeout=40) for j in (low1, low2, high)]
    assert all(d["status"] == "COMPLETED" for d in done)
    starts = {d["id"]: d["started_at"] for d in done}
    assert starts[high["id"]] < starts[low1["id"]] < starts[low2["id"]]


async def test_batch_runs_at_most_parallel_limit_at_once(api, script, lab):
    path = script("import time; time.sleep(0.4)")
    code, batch, _ = await api.post(
        "jobs/submit-batch", {"jobs": [{"agent": "Script", "params": {"path": path}} for _ in range(4)], "parallelLimit": 1}
    )
    assert code == 201 and len(batch["jobs"]) == 4 and batch["parallelLimit"] == 1
    done = [await api.wait_for(j["id"], timeout=40) for j in batch["jobs"]]
    assert all(d["status"] == "COMPLETED" and d["batch_id"] == batch["batch_id"] for d in done)
    spans = sorted((d["started_at"], d["completed_at"]) for d in done)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, "two jobs of a parallelLimit=1 batch overlapped"
    _, res, _ = await api.get("jobs/search", params={"batch_id": batch["batch_id"]})
    assert res["total"] == 4


async def test_bad_batches_are_refused_whole(api, script):
    path = script(QUICK)
    cases = [
        ({"jobs": []}, 422, "jobs"),
        ({"jobs": [{"agent": "Script", "params": {"path": path}}], "parallelLimit": 0}, 422, "parallelLimit"),
        ({"jobs": [{"agent": "Script", "params": {"path": path}}, {"agent": "Nope"}]}, 422, "jobs[1].agent"),
        ({"jobs": [], "extra": 1}, 400, "extra"),
    ]
    for body, status, field in cases:
        code, err, _ = await api.post("jobs/submit-batch", body)
        assert (code, err["field"]) == (status, field), err
    _, page, _ = await api.get("jobs/history/list")
    assert page["total"] == 0


async def test_dependents_wait_for_parents_and_are_cancelled_when_one_fails(api, script):
    ok, bad = script(QUICK, "ok.py"), script(FAILING, "bad.py")
    _, parent, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": ok}})
    _, child, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": ok}, "depends_on": [parent["id"]]})
    p, c = await api.wait_for(parent["id"]), await api.wait_for(child["id"])
    assert c["status"] == "COMPLETED" and c["started_at"] >= p["completed_at"]

    _, failing, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": bad}})
    _, orphan, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": ok}, "depends_on": [failing["id"]]})
    done = await api.wait_for(orphan["id"])
    assert done["status"] == "CANCELLED" and done["reason"] == "dependency_failed" and done["started_at"] is None


async def test_pipelines_run_in_order_and_refuse_cycles_and_unknown_parents(api, script, work_dir):
    writer = script(
        "import os, pathlib\nout = pathlib.Path(os.environ['COSMIC_HORIZONS_JOB_DIR'])/'outputs'\n"
        "(out/'stage.txt').write_text('one')\n", "write.py")
    reader = script(
        "import json, os, pathlib\njob = json.loads((pathlib.Path(os.environ['COSMIC_HORIZONS_JOB_DIR'])/'job.json').read_text())\n"
        "result = pathlib.Path(job['inputs'][0], 'stage.txt').read_text()\n", "read.py")
    code, pipe, _ = await api.post("pipelines", {"stages": [
        {"name": "second", "agent": "Script", "params": {"path": reader}, "depends_on": ["first"]},
        {"name": "first", "agent": "Script", "params": {"path": writer}},
    ]})
    assert code == 201, pipe
    second = await api.wait_for(pipe["stages"]["second"])
    assert second["status"] == "COMPLETED" and second["result"]["result"] == "one"
    assert second["depends_on"] == [pipe["stages"]["first"]]

    code, err, _ = await api.post("pipelines", {"stages": [
        {"name": "a", "agent": "Script", "params": {"path": reader}, "depends_on": ["b"]},
        {"name": "b", "agent": "Script", "params": {"path": reader}, "depends_on": ["a"]},
    ]})
    assert code == 400 and "cycle" in err["message"] and err["field"].startswith("stages[")
    code, err, _ = await api.post("pipelines", {"stages": [
        {"name": "a", "agent": "Script", "params": {"path": reader}, "depends_on": ["ghost"]}]})
    assert code == 400 and err["field"] == "stages[0].depends_on"


async def test_agents_serve_their_parameter_schemas(api):
    code, body, _ = await api.get("agents")
    script_agent = next(a for a in body["agents"] if a["name"] == "Script")
    assert script_agent["requires_dataset"] is False
    schema = script_agent["params_schema"]
    assert schema["additionalProperties"] is False and "path" in schema["required"]
    assert {"gpu_count", "max_runtime", "path", "args"} <= set(schema["properties"])


async def test_openapi_document_is_valid_and_health_reports(api):
    from openapi_spec_validator import validate

    code, doc, _ = await api.get("openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.1")
    validate(doc)
    assert doc["servers"][0]["url"].endswith("/cosmic-horizons/api")
    code, health, _ = await api.get("health")
    assert health["status"] == "ok" and health["backend"]["name"] == "local" and health["store"]["revision"]


async def test_resources_and_gpus_without_a_gpu(api):
    code, res, _ = await api.get("jobs/resources/available")
    assert code == 200 and res["backend"] == "local"
    pool = res["pools"][0]
    assert pool["detail"]["cpu_slots"] == 2 and pool["detail"]["unit"] == "CPU job slots"
    assert pool["total"] == 2 and pool["free"] == 2  # issue 13: the CPU pool read total 0, free 0
    code, gpus, _ = await api.get("gpus")
    assert gpus["available"] is False and gpus["reason"]
    code, hist, _ = await api.get("gpus/history", params={"seconds": 60})
    assert hist["samples"] == []
    code, err, _ = await api.get("gpus/history", params={"seconds": 0})
    assert code == 400 and err["field"] == "seconds"


async def test_unauthenticated_requests_are_refused(jp_fetch, lab):
    resp = await jp_fetch("cosmic-horizons", "api", "jobs", "history", "list", headers={"Authorization": "token wrong"}, raise_error=False)
    assert resp.code == 403
    body = json.loads(resp.body)
    assert body["error"] == "forbidden"


async def test_the_portal_seed_payload_runs_verbatim(api, datasets_dir):
    """Seed 000's submission, unchanged: AlphaCal on an archive dataset of that name (the real VLA data)."""
    import shutil

    from cosmic_horizons_lab.data import DEMO_DATASETS

    shutil.copy(DEMO_DATASETS["VLA.TDEM0003.1src"], datasets_dir / "VLASS2.1.eb123456.uvfits")
    code, job, _ = await api.post("jobs/submit", SEED_PAYLOAD)
    assert code == 201 and job["status"] == "QUEUED", job
    assert job["params"] == SEED_PAYLOAD["params"] and job["gpu_count"] == 2 and job["max_runtime_seconds"] == 14400
    assert job["webhook_url"] == SEED_PAYLOAD["webhook_url"]
    done = await api.wait_for(job["id"], timeout=240)
    assert done["status"] == "COMPLETED", done
    code, status, _ = await api.get(f"jobs/{job['id']}/status")
    assert status["metrics"]["visibilities_processed"] > 0 and status["metrics"]["vram_usage"] > 0
    _, outputs, _ = await api.get(f"jobs/{job['id']}/outputs")
    assert {"calibrated.uvfits", "caltable.npz", "flags.npz"} <= {f["path"] for f in outputs["files"]}


async def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(api, script, lab):
    lab.execution_backend.kill_grace_seconds = 0.5
    stubborn = script("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "from cosmic_horizons_lab.executor import report\nreport(progress=0.1)\ntime.sleep(60)\n")
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": stubborn}})
    await api.wait_for(job["id"], {"RUNNING"})
    await asyncio.sleep(0.3)  # let the script install its handler
    code, _, _ = await api.delete(f"jobs/{job['id']}")
    assert code == 200
    done = await api.wait_for(job["id"], timeout=15)
    assert done["status"] == "CANCELLED"


@pytest.fixture
def jp_server_authorizer():
    from jupyter_server.auth.authorizer import Authorizer

    class _DenyMallory(Authorizer):
        def is_authorized(self, handler, user, action, resource):
            return not (user.username == "mallory" and resource == "cosmic-horizons")

    return _DenyMallory


@pytest.fixture
def deny_mallory(lab_config, jp_server_config, jp_server_authorizer):
    jp_server_config["ServerApp"]["authorizer_class"] = jp_server_authorizer


async def test_the_authorizer_is_consulted_on_every_handler(deny_mallory, api, script, jp_ws_fetch):
    from tornado.httpclient import HTTPClientError

    code, err, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(QUICK)}}, user="mallory")
    assert code == 403 and err["error"] == "forbidden"
    code, _, _ = await api.get("jobs/history/list", user="mallory")
    assert code == 403
    with pytest.raises(HTTPClientError) as exc:
        await jp_ws_fetch("cosmic-horizons", "api", "events", headers={"X-Test-User": "mallory"})
    assert exc.value.code == 403
    code, _, _ = await api.get("jobs/history/list", user="alice")
    assert code == 200


@pytest.mark.parametrize("lab_config", [{"warm_datasets": True}])
async def test_the_dataset_listing_is_warm_at_start(api, lab, monkeypatch):
    """The first GET datasets is served from what the start-up read (issue 13: it took 12 s)."""
    import cosmic_horizons_lab.server.datasets as datasets_module

    await lab._warming  # the start-up read, in the executor

    def no_worker(*args, **kwargs):
        raise AssertionError("the listing started a science worker after the warm-up")

    monkeypatch.setattr(datasets_module, "run_science", no_worker)
    code, body, _ = await api.get("datasets")
    assert code == 200
    demo = next(d for d in body["datasets"] if d["id"] == "VLA.TDEM0003.1src")
    assert demo["shape"]["visibilities"] == 348160


async def test_gpus_asked_of_a_server_without_one_get_a_warning(api, script):
    """Accepted (the agents run on the CPU), but said so: in the answer and in the tips (issue 13)."""
    body = {"agent": "Script", "params": {"path": script(QUICK), "gpu_count": 2}}
    code, tips, _ = await api.post("jobs/optimize", body)
    assert code == 200
    gpu_tips = [t for t in tips["tips"] if t["field"] == "params.gpu_count" and t["severity"] == "warning"]
    assert gpu_tips and "no GPU" in gpu_tips[0]["message"], tips["tips"]
    code, job, _ = await api.post("jobs/submit", body)
    assert code == 201 and job["warnings"][0]["field"] == "params.gpu_count"
    assert "2 GPUs requested" in job["warnings"][0]["message"]
    code, plain, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(QUICK), "gpu_count": 0}})
    assert code == 201 and "warnings" not in plain


async def test_the_log_says_what_the_job_is_doing(api, script):
    """Stage reports go to the job's log too (issue 13: a finished science job's log was empty)."""
    code = "from cosmic_horizons_lab.executor import report\nreport(progress=0.5, stage='calibrating')\n"
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(code, "staged.py")}})
    done = await api.wait_for(job["id"])
    assert done["status"] == "COMPLETED", done
    _, logs, _ = await api.get(f"jobs/{job['id']}/logs")
    lines = logs["data"].splitlines()
    assert lines[0].startswith(f"Script job {job['id']} on ") and lines[1].endswith("] calibrating (50%)"), lines
