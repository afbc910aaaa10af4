"""A Notebook job on the Slurm test cluster: nbclient runs the notebook inside the batch job."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmic_horizons_lab.protocol.jobdir import job_dir
from tests.test_notebook_jobs import write_notebook


@pytest.fixture
def lab_config(slurm_cluster):
    return {"backend": "slurm", "poll_interval": 0.5}


@pytest.mark.timeout(240)
async def test_a_parameterised_notebook_runs_on_slurm(api, jp_root_dir, work_dir):
    import nbformat

    path = write_notebook(Path(jp_root_dir), "sweep.ipynb", [
        ("code", "field = 'none'\nscale = 1", ["parameters"]),
        ("code", "import os\nprint(field, scale * 3, os.environ.get('SLURM_JOB_ID', 'no slurm'))", []),
    ])
    _, job, _ = await api.post("jobs/submit", {"agent": "Notebook", "params": {
        "path": path, "parameters": {"field": "3C147", "scale": 5}, "gpu_count": 0}})
    done = await api.wait_for(job["id"], timeout=200)
    assert done["status"] == "COMPLETED", done
    assert done["backend"] == "slurm" and done["backend_job_id"].isdigit()
    executed = nbformat.read(str(job_dir(work_dir, "astro", job["id"]) / "outputs" / "sweep.ipynb"), as_version=4)
    printed = "".join(o.get("text", "") for o in executed.cells[2].outputs)
    # The kernel ran inside the Slurm job: it sees the job's id.
    assert printed.split() == ["3C147", "15", done["backend_job_id"].split("_")[0]], printed
