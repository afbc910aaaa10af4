"""A job on the Slurm test cluster samples itself on its own node (issue 15): its samples carry the
node Slurm ran it on (as ``sacct`` and ``scontrol`` name it), reach ``GET jobs/{id}/resources``,
and put that node on the heatmap with the job holding it.

The cluster's GPUs are GRES entries without a driver (``CUDA_VISIBLE_DEVICES`` is set, NVML
finds nothing), so the job falls back to its CPU series: real numbers of its own process tree.
"""

from __future__ import annotations

import pytest

from .conftest import sh, wait_for_accounting

# 1.5 s of the job's own CPU time, not of the wall clock: on a loaded (or paused) VM a wall-clock
# burn can end before the sampler's thread has run, and the test would time the host.
BURN = """
import time
from cosmic_horizons_lab.executor import report
t0 = time.process_time()
while time.process_time() - t0 < 1.5:
    pass
report(progress=1.0)
"""


@pytest.fixture
def lab_config(slurm_cluster):
    return {"backend": "slurm", "poll_interval": 0.5, "job_sample_interval": 0.2}


async def test_a_slurm_job_reports_samples_from_its_own_node(api, script):
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script(BURN), "gpu_count": 1}})
    running = await api.wait_for(job["id"], {"RUNNING", "COMPLETED", "FAILED"}, timeout=90)
    slurm_id = running["backend_job_id"]
    shown = sh("scontrol", "show", "job", slurm_id, check=False).stdout
    done = await api.wait_for(job["id"], timeout=90)
    assert done["status"] == "COMPLETED", done
    await wait_for_accounting(slurm_id)
    nodelist = sh("sacct", "-X", "--noheader", "--parsable2", "--format=NodeList", f"--jobs={slurm_id}").stdout.split()
    assert len(nodelist) == 1 and nodelist[0] not in ("", "None"), nodelist
    node = nodelist[0]
    if "NodeList=" in shown:  # scontrol still knew the job: it names the same node
        assert f" NodeList={node}" in shown or f"\n   NodeList={node}" in shown, shown

    samples, after = [], 0
    while True:
        code, body, _ = await api.get(f"jobs/{job['id']}/resources", params={"after": after})
        assert code == 200, body
        if not body["samples"]:
            break
        samples += body["samples"]
        after = body["next_after"]
    assert len(samples) >= 3, samples
    assert {s["host"] for s in samples} == {node}
    assert {s["kind"] for s in samples} == {"cpu"}  # GRES without a driver: NVML finds nothing
    assert max(s["utilization"] for s in samples) > 30
    assert min(s["memory_bytes"] for s in samples) > 10 * 2**20  # a Python process's RSS at the least

    _, inventory, _ = await api.get("gpus")
    on_node = next(n for n in inventory["nodes"] if n["host"] == node)
    assert job["id"] in {g["job_id"] for g in on_node["gpus"]}
