"""Exactly-once submission on Slurm: sbatch ran, its id was never recorded, a restart adopts it.

The launch token travels in the job's ``--comment``; a fresh backend (as after a restart)
finds the job, or the array element, by it in squeue, and finds nothing for a token no sbatch
ever carried (that job may be submitted again).
"""

from __future__ import annotations

import subprocess
import time

import pytest

from cosmic_horizons_lab.server.jobs.dispatch import DRILL_PAUSE_ENV

from .conftest import make_backend, make_job, wait_until

pytestmark = pytest.mark.timeout(240)


async def test_a_fresh_backend_finds_a_job_and_array_elements_by_their_launch_token(work):
    first = make_backend(work)
    single = make_job(work, "intent-one", "pass\n")
    single.launch_token = "chltok1"
    bid = await first.submit(single)
    elements = [make_job(work, f"intent-arr{i}", "pass\n") for i in range(3)]
    for i, spec in enumerate(elements):
        spec.launch_token = f"chltok2.{i}"
    ids = await first.submit_array(elements, None)

    restarted = make_backend(work)  # knows nothing of what `first` submitted
    assert await restarted.find_launch(single) == bid
    assert [await restarted.find_launch(spec) for spec in elements] == ids
    never = make_job(work, "intent-never", "pass\n")
    never.launch_token = "chltok-never-submitted"
    assert await restarted.find_launch(never) is None
    # what was found is tracked: it is polled to its end like any other job
    states = await wait_until(restarted, [bid, *ids], timeout=90)
    assert {s.status for s in states.values()} == {"COMPLETED"}, states
    comment = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={bid}", "--format=%k"],
                             capture_output=True, text=True).stdout.strip()
    assert comment == "chl-launch:chltok1"
    assert (work / "intent-one" / "launch_token").read_text().split() == ["chltok1", bid]


def test_a_server_killed_after_sbatch_adopts_the_job_instead_of_submitting_it_again(slurm_cluster, tmp_path,
                                                                                   monkeypatch):
    from ..services import LabServer, write_script

    root = tmp_path / "root"
    root.mkdir()
    ran = root / "ran.txt"
    write_script(root, "once.py", f"import os\nopen({str(ran)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
                                  "result = 'once'\n")
    config = {"backend": "slurm", "poll_interval": 0.5, "SlurmBackend.job_name_template": "chltest-{agent}-{job_id}"}
    monkeypatch.setenv(DRILL_PAUSE_ENV, "30")  # after sbatch, 30 s before the id is recorded
    first = LabServer(root, config=config).start()
    job = first.client().submit("Script", params={"path": "once.py"})
    name = f"chltest-Script-{job['id']}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        listed = subprocess.run(["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i"],
                                capture_output=True, text=True).stdout.split()
        if listed:
            break
        time.sleep(0.1)
    assert listed, "sbatch never ran"
    assert first.client().job(job["id"])["status"] == "QUEUED"  # the id is not recorded yet
    first.kill()
    monkeypatch.delenv(DRILL_PAUSE_ENV)
    # The job ends while no server runs, and squeue forgets it (the test cluster's MinJobAge is
    # 10 s; its accounting keeps no comments): only the job directory still knows.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and subprocess.run(
        ["squeue", "--noheader", f"--jobs={listed[0]}", "--format=%i"], capture_output=True, text=True
    ).stdout.strip():
        time.sleep(1)
    second = LabServer(root, config=config)
    second.port = first.port
    second.start()
    try:
        done = second.client().wait(job["id"], timeout=120)
        assert done["status"] == "COMPLETED" and done["backend_job_id"] == listed[0], (done, listed)
        queuing = [e for e in second.client().events(job["id"]) if e["type"] == "job.queuing"]
        assert len(queuing) == 1 and queuing[0]["payload"].get("adopted") is True
    finally:
        second.stop()
    # squeue forgets ended jobs after MinJobAge (10 s here): ask the accounting, which keeps them
    deadline = time.monotonic() + 30
    while True:
        slurm_jobs = subprocess.run(["sacct", "-X", "--noheader", "--parsable2", "--allusers", f"--name={name}",
                                     "--starttime=now-2hours", "--format=JobID"],
                                    capture_output=True, text=True).stdout.split()
        if listed[0] in slurm_jobs or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert slurm_jobs == listed  # one sbatch, not two
    assert len(ran.read_text().split()) == 1
