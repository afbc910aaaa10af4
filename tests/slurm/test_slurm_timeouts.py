"""Outcomes that take Slurm a while: the time limit (a minute at least), jobs that left squeue.

Their jobs were submitted by the session fixture when the cluster came up, so by now
most of the wait has passed while the other tests ran.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import make_backend, make_job, records, wait_until

pytestmark = pytest.mark.timeout(200)


async def test_time_limit_is_failed_timeout(slurm_cluster, tmp_path):
    early = slurm_cluster.early
    bid = early["ids"]["timeout"]
    backend = make_backend(tmp_path)
    backend._job_dirs[bid] = early["dirs"]["timeout"]
    st = (await wait_until(backend, [bid], timeout=180, interval=1.0))[bid]
    assert st.status == "FAILED", st
    assert st.reason == "timeout"
    assert st.detail["slurm_state"].startswith("TIMEOUT")
    assert "#SBATCH --time=00:01:00" in (early["dirs"]["timeout"] / "slurm.sbatch").read_text()
    log = (early["dirs"]["timeout"] / "stdout.log").read_text()
    assert "DUE TO TIME LIMIT" in log
    assert records(early["dirs"]["timeout"])[0]["type"] == "started"


async def test_jobs_that_left_the_queue_come_from_sacct(slurm_cluster, tmp_path):
    """After MinJobAge Slurm drops ended jobs from squeue; a backend that never saw them end
    (a restarted server) gets exit code and who cancelled from sacct --parsable2.

    The cancelled job is cancelled here, not at session start: a slurmctld restart (the
    fault tests make one) re-records the ended jobs it recovers without the canceller.
    """
    ids = {"exit3": slurm_cluster.early["ids"]["exit3"]}
    first = make_backend(tmp_path / "first")
    sleeper = make_job(tmp_path, "cancel-late", "import time\ntime.sleep(600)\n")
    ids["cancelled"] = await first.submit(sleeper)
    await wait_until(first, [ids["cancelled"]], lambda s: s.status == "RUNNING", timeout=30)
    await first.cancel(ids["cancelled"])
    # wait until the controller has purged them (MinJobAge=10 s in the test cluster)
    deadline = time.monotonic() + 120
    while {ids["exit3"], ids["cancelled"]} & slurm_cluster.squeue_ids():
        assert time.monotonic() < deadline, "jobs never left squeue"
        await asyncio.sleep(1)
    backend = make_backend(tmp_path / "restarted")
    states = await backend.poll([ids["exit3"], ids["cancelled"]])
    ex, ca = states[ids["exit3"]], states[ids["cancelled"]]
    assert (ex.status, ex.exit_code, ex.reason, ex.detail["source"]) == ("FAILED", 3, "exit_code", "sacct")
    assert (ca.status, ca.reason, ca.detail["source"]) == ("CANCELLED", "cancelled", "sacct")
    assert ca.detail["cancelled_by"] == "root"
    assert backend.command_counts == {"squeue": 1, "sacct": 1}
