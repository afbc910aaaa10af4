"""Schemathesis (pinned in the test extra) over the OpenAPI document a real server serves:
thousands of generated requests, valid and invalid, and not one may answer 5xx or answer
outside the document (a status it does not list, a content type or a body it does not describe).

The run is Schemathesis's own CLI in a subprocess, seeded and deterministic, so each CI run sends
the same cases and a failure reproduces; it stops at :data:`LIMIT_S` whatever happens. The
server's own access log counts the 5xx a second time, independently of Schemathesis's checks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cosmic_horizons_lab.notebook.client import Client

from .services import LabServer, kill_job_groups, write_script

#: Cases per operation in the fuzzing phase; with the examples and coverage phases (which
#: generate what the schema defines, whatever this says) a run has well over MIN_CASES.
MAX_EXAMPLES = 80
MIN_CASES = 5000
SEED = 20261130
#: The run's bound in time: about 3 minutes on an idle two-core machine, so this leaves room
#: for a loaded one.
LIMIT_S = 540
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
JOB = """
from pathlib import Path
from cosmic_horizons_lab.executor import report
report(progress=0.5, visibilities_processed=10)
Path("outputs").mkdir(exist_ok=True)
Path("outputs/result.txt").write_text("done")
print("a log line")
"""
#: jupyter-server's access log line: "[E ... ServerApp] 500 GET /cosmic-horizons/api/... (...)".
ACCESS = re.compile(r"\] ([1-5]\d\d) (GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /cosmic-horizons/api/")


@pytest.fixture
def server(tmp_path):
    srv = LabServer(tmp_path / "root").start()
    yield srv
    srv.stop()
    kill_job_groups(tmp_path / "root" / "jobs")


@pytest.mark.timeout(LIMIT_S + 120)
def test_schemathesis_finds_no_5xx_and_nothing_outside_the_document(server, tmp_path):
    client = Client(server.url, server.token, timeout=180)  # a loaded machine describes the data slowly
    # One finished job with a log and an output, so the job routes reach their real work for it.
    path = write_script(server.root, "schemathesis_job.py", JOB)
    job = client.submit("Script", params={"path": path})
    client.wait(job["id"], timeout=60)
    client.request("GET", "datasets")  # the first listing describes the shipped data: not under a 10 s timeout

    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.job_id" = "{job["id"]}"\n')
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{server.url}cosmic-horizons/api/openapi.json", "-H", f"Authorization: token {server.token}",
        "--checks", CHECKS, "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED), "--generation-deterministic",
        "--workers", "2", "--request-timeout", "60", "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]
    started = time.monotonic()
    run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=LIMIT_S, cwd=tmp_path,
                         env=dict(os.environ, SCHEMATHESIS_TELEMETRY="false"))
    elapsed = time.monotonic() - started
    (tmp_path / "schemathesis.out").write_text(run.stdout + run.stderr)
    out = run.stdout[-6000:] + run.stderr[-2000:]
    assert report.exists(), f"Schemathesis wrote no report (exit {run.returncode}):\n{out}"
    result = json.loads(report.read_text())

    statuses = [int(m.group(1)) for m in ACCESS.finditer(Path(server.log.name).read_text(errors="replace"))]
    server_errors = [s for s in statuses if s >= 500]
    cases = result["test_cases"]["generated"]
    print(f"schemathesis: {cases} cases in {elapsed:.0f} s; 5xx in the server's log: {len(server_errors)}; "
          f"4xx/5xx logged: {len(statuses)}")
    assert result["complete"], out
    assert cases >= MIN_CASES, f"only {cases} cases: raise MAX_EXAMPLES\n{out}"
    assert not server_errors, f"{len(server_errors)} answers 5xx in the server's log\n{out}"
    assert not result["failures"], f"{result['failures']}\n{out}"
    assert not result["errors"], f"{result['errors']}\n{out}"
    assert run.returncode == 0, out
