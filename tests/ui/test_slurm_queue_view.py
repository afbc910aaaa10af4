"""The Slurm queue view in headless Chromium, against a JupyterLab whose backend is the Slurm
test cluster (issue 13, scope 4): a job submitted by hand shows beside ours, ours marked."""

from __future__ import annotations

import os
import subprocess
from typing import Iterator

import pytest

from ..slurm.conftest import JOB_PREFIX, SCRIPT
from .conftest import LabServer, copy_to_docs, open_lab, screenshot, start_lab, stop_lab

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def slurm_env() -> None:
    """The Slurm test cluster, started (idempotent) and named in SLURM_CONF for the server."""
    started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        pytest.fail(f"the Slurm test cluster did not start: {started.stderr[-2000:]}")
    for line in subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True, timeout=60).stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            os.environ[key] = value


@pytest.fixture(scope="module")
def slurm_lab(slurm_env, tmp_path_factory) -> Iterator[LabServer]:
    base = tmp_path_factory.mktemp("ui-slurm-lab")
    root = base / "root"
    root.mkdir()
    (root / "nap.py").write_text("import time\ntime.sleep(120)\n")
    server = start_lab(root, base / "state", ["--CosmicHorizons.backend=slurm"])
    yield server
    stop_lab(server)


def test_queue_view_shows_the_whole_queue(page, slurm_lab, tmp_path) -> None:
    foreign = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={JOB_PREFIX}by-hand", "--time=00:02:00",
         f"--output={tmp_path}/by-hand.out", "--wrap=sleep 120"],
        check=True, capture_output=True, text=True, timeout=60).stdout.strip().split(";")[0]
    job = slurm_lab.request("POST", "jobs/submit", {"agent": "Script", "params": {"path": "nap.py", "gpu_count": 0}})
    try:
        ours = slurm_lab.wait_status(job["id"], {"QUEUING", "RUNNING"}, timeout=60)["backend_job_id"]
        open_lab(page, slurm_lab)
        tab = page.locator("li.lm-TabBar-tab[data-id='cosmic-horizons-slurm-queue']")
        tab.wait_for(timeout=30_000)
        tab.click()
        view = page.locator("#cosmic-horizons-slurm-queue")
        view.locator(f"tr[data-slurm-id='{foreign}'][data-ours='false']").wait_for(timeout=20_000)
        view.locator(f"tr[data-slurm-id='{ours}'][data-ours='true']").wait_for(timeout=20_000)
        # What the row says is what squeue says of that job.
        state = subprocess.run(["squeue", "--noheader", "--jobs", foreign, "--format=%T|%j"], capture_output=True,
                               text=True, timeout=60).stdout.strip().split("|")
        row = view.locator(f"tr[data-slurm-id='{foreign}']").inner_text()
        assert state[1] in row and f"{JOB_PREFIX}by-hand" in row
        screenshot(page, "slurm-queue", selector="#cosmic-horizons-slurm-queue")
        copy_to_docs("slurm-queue")
    finally:
        subprocess.run(["scancel", foreign], check=False, capture_output=True, timeout=60)
        try:
            slurm_lab.request("DELETE", f"jobs/{job['id']}")
        except Exception:
            pass
