"""The user's whole Slurm queue (``GET slurm/queue``) and the SlurmScript agent, on the test cluster.

The queue must hold a job we did not submit (sbatch by hand) as well as ours, marked as ours,
with what Slurm itself says of it (``squeue --json``, another output of Slurm's, is the
reference). A SlurmScript job runs the user's sbatch script: its output is the job's log, its
exit status the job's, and its own ``#SBATCH`` lines reach Slurm (``scontrol show job``).
"""

from __future__ import annotations

import json
import subprocess

import jsonschema
import pytest

from cosmic_horizons_lab.backends.slurm.queue import parse_user_queue, read_user_queue
from cosmic_horizons_lab.backends.slurm.user_script import read_directives
from cosmic_horizons_lab.server.api.slurm_queue import SLURM_QUEUE_SCHEMAS

from .conftest import JOB_PREFIX, make_backend

USER_SCRIPT = """#!/bin/bash
#SBATCH --time=00:03:00   # three minutes
#SBATCH --output=elsewhere.out
#SBATCH -J not-our-name
#SBATCH --comment="hello"

echo "hello from $1 in $(basename "$PWD")"
echo "time limit from slurm: $SLURM_JOB_ID"
exit 3
#SBATCH --mem=1  (after the first command: sbatch ignores it, so do we)
"""


def test_reading_directives_as_sbatch_does() -> None:
    # Ours (output, name, comment) are left out; the rest until the first command is kept.
    assert read_directives(USER_SCRIPT) == ["--time=00:03:00"]


def test_parse_keeps_a_name_with_the_separator() -> None:
    rows = parse_user_queue("12|RUNNING|None|0:05|1:00:00|1|node1|debug|alice|a|b\n\nnot a row\n")
    assert len(rows) == 1 and rows[0].name == "a|b" and rows[0].reason is None and rows[0].nodes == 1


def _sbatch_foreign(tmp_path) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={JOB_PREFIX}foreign", "--time=00:02:00",
         f"--output={tmp_path}/foreign.out", "--wrap=sleep 120"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    return out.split(";")[0]


async def test_the_queue_holds_a_job_we_did_not_submit(slurm_cluster, tmp_path) -> None:
    foreign = _sbatch_foreign(tmp_path)
    try:
        backend = make_backend(tmp_path)
        rows = {r.id: r for r in await read_user_queue(backend)}
        assert foreign in rows, rows
        row = rows[foreign]
        reference = json.loads(subprocess.run(["squeue", "--json", "--jobs", foreign], check=True,
                                              capture_output=True, text=True, timeout=60).stdout)
        (job,) = [j for j in reference["jobs"] if str(j["job_id"]) == foreign]
        assert row.name == job["name"] == f"{JOB_PREFIX}foreign"
        # The same state, or a later one (the scheduler may start it between the two calls).
        assert row.state == job["job_state"] or (row.state == "PENDING" and job["job_state"] == "RUNNING")
        assert row.time_limit == "2:00" and job["time_limit"] == 2  # minutes in Slurm's JSON
        assert row.user == job["user_name"] and row.partition == job["partition"]
        if row.state == job["job_state"] == "PENDING":
            assert (row.reason or "None") == job["state_reason"]
    finally:
        subprocess.run(["scancel", foreign], check=False, capture_output=True, timeout=60)


@pytest.fixture
def lab_config(slurm_cluster):
    return {"backend": "slurm", "poll_interval": 0.5}


async def test_slurm_queue_through_the_api_marks_ours(api, script, tmp_path) -> None:
    foreign = _sbatch_foreign(tmp_path)
    try:
        _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {
            "path": script("import time\ntime.sleep(60)\n", "nap.py"), "gpu_count": 0}})
        queued = await api.wait_for(job["id"], {"QUEUING", "RUNNING"}, timeout=60)
        resp = await api.fetch("cosmic-horizons", "api", "slurm", "queue", method="GET", raise_error=False)
        answer = json.loads(resp.body)
        assert resp.code == 200, answer
        schema = {"$ref": "#/components/schemas/SlurmQueue", "components": {"schemas": SLURM_QUEUE_SCHEMAS}}
        jsonschema.validate(answer, schema)
        rows = {r["id"]: r for r in answer["jobs"]}
        assert rows[foreign]["ours"] is False and rows[foreign]["job_id"] is None
        mine = rows[queued["backend_job_id"]]
        assert mine["ours"] is True and mine["job_id"] == job["id"]
        await api.delete(f"jobs/{job['id']}")
    finally:
        subprocess.run(["scancel", foreign], check=False, capture_output=True, timeout=60)


async def test_a_slurm_script_runs_with_its_directives(api, script) -> None:
    path = script(USER_SCRIPT, "run.sbatch")
    _, job, _ = await api.post("jobs/submit", {"agent": "SlurmScript", "params": {
        "path": path, "arguments": ["the form"], "gpu_count": 0}})
    running = await api.wait_for(job["id"], {"QUEUING", "RUNNING", "FAILED"}, timeout=60)
    shown = subprocess.run(["scontrol", "show", "job", running["backend_job_id"]], capture_output=True,
                           text=True, timeout=60).stdout
    assert "TimeLimit=00:03:00" in shown, shown  # the script's #SBATCH --time reached Slurm
    done = await api.wait_for(job["id"], timeout=90)
    assert done["status"] == "FAILED" and "3" in (done["error"] or ""), done  # the script's exit status
    _, log, _ = await api.get(f"jobs/{job['id']}/logs")
    text = log.get("text") or log.get("data") or ""
    assert "hello from the form in" in text, log  # its output is the job's log
