"""Faults: the controller goes away and comes back; jobs Slurm forgot; parsing other versions."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from cosmic_horizons_lab.backends.base import BackendUnavailable
from cosmic_horizons_lab.backends.slurm import (
    QueueSnapshot,
    SlurmBackend,
    format_time_limit,
    map_slurm_state,
    parse_exit_status,
    parse_gres,
    parse_sacct,
    parse_squeue_json,
    sacct_lookup,
)

from .conftest import make_backend, make_job, wait_until

pytestmark = pytest.mark.timeout(150)


async def test_controller_down_and_back(work, slurm_cluster):
    backend = make_backend(work)
    spec = make_job(work, "survivor", "import time\ntime.sleep(8)\n")
    bid = await backend.submit(spec)
    await wait_until(backend, [bid], lambda s: s.status == "RUNNING", timeout=30)
    slurm_cluster.ctld_stop()
    try:
        # squeue --json of Slurm 22.05 exits 0 with an empty list and an "errors" entry
        # when the controller is down: that must read as an outage, not as "all jobs gone".
        with pytest.raises(BackendUnavailable):
            await backend.poll([bid])
        # backoff: an immediate second poll does not even run squeue
        before = dict(backend.command_counts)
        with pytest.raises(BackendUnavailable) as err:
            await backend.poll([bid])
        assert backend.command_counts == before
        assert "next try" in str(err.value)
        with pytest.raises(BackendUnavailable):
            await backend.submit(make_job(work, "during-outage", "pass\n"))
        health = await backend.health()
        assert health["ok"] is False
        assert "contact slurm controller" in health["reason"].lower()
    finally:
        slurm_cluster.ctld_start()
    # back: the job that ran through the outage is still tracked and ends normally
    time.sleep(backend.poll_backoff_max)
    states = await wait_until(backend, [bid], timeout=60)
    assert states[bid].status == "COMPLETED", states[bid]
    assert (await backend.health())["ok"] is True
    later = await backend.submit(make_job(work, "after-outage", "pass\n"))
    assert (await wait_until(backend, [later]))[later].status == "COMPLETED"


async def test_job_unknown_to_squeue_and_sacct_is_lost(work):
    patient = make_backend(work, lost_grace_seconds=3600)
    st = (await patient.poll(["8765432"]))["8765432"]
    # within the grace it is not declared lost (accounting may lag the controller)
    assert st.status == "QUEUING" and st.detail["source"] == "unconfirmed"
    backend = make_backend(work, lost_grace_seconds=0)
    st = (await backend.poll(["8765432", "8765432_4"]))
    assert (st["8765432"].status, st["8765432"].reason) == ("FAILED", "lost")
    assert (st["8765432_4"].status, st["8765432_4"].reason) == ("FAILED", "lost")


async def test_squeue_failure_does_not_make_jobs_lost(work):
    """A broken squeue (here: a wrapper that always fails) is an outage, never 'lost'."""
    backend = make_backend(work, squeue_command="false", lost_grace_seconds=0)
    with pytest.raises(BackendUnavailable):
        await backend.poll(["1"])


async def test_missing_command_is_unavailable(work):
    backend = make_backend(work, sbatch_command="/nonexistent/sbatch-wrapper")
    with pytest.raises(BackendUnavailable):
        await backend.submit(make_job(work, "nocmd", "pass\n"))
    health = await make_backend(work, sinfo_command="/nonexistent/sinfo").health()
    assert health["ok"] is False and "nonexistent" in health["reason"]


async def test_command_wrappers_with_arguments(work, tmp_path):
    """TACC-style wrapper scripts, and commands given with leading arguments."""
    wrapper = tmp_path / "sbatch-wrapper"
    log = tmp_path / "wrapper.log"
    wrapper.write_text(f'#!/bin/bash\necho "$@" >> {log}\nexec sbatch "$@"\n')
    wrapper.chmod(0o755)
    backend = make_backend(work, sbatch_command=str(wrapper), squeue_command="env squeue")
    bid = await backend.submit(make_job(work, "wrapped", "pass\n"))
    assert (await wait_until(backend, [bid]))[bid].status == "COMPLETED"
    assert "--parsable" in log.read_text()
    assert backend.command_counts["squeue"] >= 1


async def test_without_slurmdbd_the_completion_log_answers(nodbd_cluster, work):
    """No slurmdbd: sacct fails ("accounting storage is disabled"); the backend falls back
    to sacct -c (jobcomp/filetxt) for jobs that left the queue, and never reports a job
    lost because accounting is missing while squeue still shows it."""
    import subprocess

    backend = make_backend(work, slurm_conf=nodbd_cluster)
    ok = await backend.submit(make_job(work, "nodbd-ok", "pass\n"))
    bad = await backend.submit(make_job(work, "nodbd-3", "import sys\nsys.exit(3)\n"))
    states = await wait_until(backend, [ok, bad], timeout=60)
    assert states[ok].status == "COMPLETED"
    assert (states[bad].status, states[bad].exit_code) == ("FAILED", 3)
    env = {**__import__("os").environ, "SLURM_CONF": nodbd_cluster}
    deadline = time.monotonic() + 60
    while subprocess.run(["squeue", "-h", "-t", "all", "-j", f"{ok},{bad}"], env=env,
                         capture_output=True, text=True).stdout.strip():  # fmt: skip
        assert time.monotonic() < deadline, "jobs never left squeue"
        time.sleep(0.5)
    fresh = make_backend(work, slurm_conf=nodbd_cluster)
    states = await fresh.poll([ok, bad])
    assert states[ok].status == "COMPLETED" and states[ok].detail["source"] == "sacct"
    assert (states[bad].status, states[bad].exit_code, states[bad].reason) == ("FAILED", 3, "exit_code")
    assert fresh._accounting == "jobcomp"
    # the failing sacct is not retried on every poll
    before = fresh.command_counts.get("sacct", 0)
    await fresh.poll(["9999991"])
    assert fresh.command_counts["sacct"] == before + 1


async def test_sbatch_timeout_after_submitting_does_not_submit_twice(work, tmp_path, slurm_cluster):
    """sbatch that submits but answers too late (a slow controller, a slow wrapper): the
    backend finds the job by its unique name instead of calling the submission failed."""
    wrapper = tmp_path / "slow-sbatch"
    wrapper.write_text('#!/bin/bash\nsbatch "$@" > /dev/null\nexec sleep 5\n')
    wrapper.chmod(0o755)
    backend = make_backend(work, sbatch_command=str(wrapper), submit_timeout=1.5)
    spec = make_job(work, "slow-submit", "pass\n")
    bid = await backend.submit(spec)
    assert bid.isdigit()
    st = (await wait_until(backend, [bid]))[bid]
    assert st.status == "COMPLETED"
    names = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i %j"],
                           capture_output=True, text=True).stdout  # fmt: skip
    assert sum(1 for line in names.splitlines() if line.split()[-1] == "chltest-Script-slow-submit") == 1
    # a timeout with nothing submitted stays an outage
    never = tmp_path / "hung-sbatch"
    never.write_text("#!/bin/bash\nexec sleep 5\n")
    never.chmod(0o755)
    hung = make_backend(work, sbatch_command=str(never), submit_timeout=1.0)
    with pytest.raises(BackendUnavailable):
        await hung.submit(make_job(work, "never-submitted", "pass\n"))


# -- parsing Slurm's answers across versions (pure functions, no cluster needed) ---------------


def test_squeue_json_of_newer_slurm():
    """Slurm ≥ 23.02 nests states in lists and numbers in {set, infinite, number} objects."""
    doc = {
        "errors": [],
        "jobs": [
            {"job_id": 101, "array_job_id": {"set": True, "number": 0}, "array_task_id": {"set": False, "number": 0},
             "array_task_string": "", "job_state": ["RUNNING"], "state_reason": "None",
             "exit_code": {"status": ["SUCCESS"], "return_code": {"set": True, "number": 0}}, "user_name": "a"},
            {"job_id": 102, "array_job_id": {"set": True, "number": 0}, "array_task_id": {"set": False, "number": 0},
             "job_state": ["FAILED"], "state_reason": "NonZeroExitCode",
             "exit_code": {"status": ["EXITED"], "return_code": {"set": True, "number": 3},
                           "signal": {"id": {"set": False, "number": 0}, "name": ""}}},
            {"job_id": 201, "array_job_id": {"set": True, "number": 200}, "array_task_id": {"set": True, "number": 0},
             "job_state": ["COMPLETING"], "state_reason": "None", "exit_code": {"status": ["SUCCESS"]}},
            {"job_id": 200, "array_job_id": {"set": True, "number": 200}, "array_task_id": {"set": False, "number": 0},
             "array_task_string": "1-3,5%2", "job_state": ["PENDING"], "state_reason": "JobArrayTaskLimit"},
            {"job_id": 300, "array_job_id": {"set": True, "number": 0}, "array_task_id": {"set": False, "number": 0},
             "job_state": ["PENDING", "REQUEUED"], "state_reason": "BeginTime"},
        ],
    }  # fmt: skip
    entries = parse_squeue_json(json.dumps(doc))
    snap = QueueSnapshot(entries, 0.0)
    assert snap.lookup("101").states == ["RUNNING"]
    assert parse_exit_status(snap.lookup("102").exit_raw) == (3, 0)
    assert snap.lookup("200_0").job_id == 201
    assert snap.lookup("200_5").reason == "JobArrayTaskLimit"
    assert snap.lookup("200_4") is None
    assert snap.lookup("201") is None  # an array element is known by its array id only
    assert map_slurm_state(snap.lookup("200_0").states) == ("RUNNING", None)  # COMPLETING
    assert map_slurm_state(snap.lookup("300").states) == ("QUEUING", "requeued")
    with pytest.raises(Exception):
        parse_squeue_json(json.dumps({"errors": [{"error": "Unable to contact slurm controller"}], "jobs": []}))


def test_state_mapping_table():
    cases = {
        ("PENDING", ""): ("QUEUING", None),
        ("CONFIGURING", ""): ("QUEUING", None),
        ("RUNNING", ""): ("RUNNING", None),
        ("COMPLETING", ""): ("RUNNING", None),
        ("COMPLETED", ""): ("COMPLETED", None),
        ("FAILED", "NonZeroExitCode"): ("FAILED", "failed"),
        ("NODE_FAIL", ""): ("FAILED", "node_fail"),
        ("OUT_OF_MEMORY", ""): ("FAILED", "out_of_memory"),
        ("TIMEOUT", ""): ("FAILED", "timeout"),
        ("BOOT_FAIL", ""): ("FAILED", "boot_fail"),
        ("DEADLINE", ""): ("FAILED", "deadline"),
        ("PREEMPTED", ""): ("FAILED", "preempted"),
        ("REQUEUED", ""): ("QUEUING", "requeued"),
        ("CANCELLED", ""): ("CANCELLED", "cancelled"),
        ("CANCELLED by 1001", ""): ("CANCELLED", "cancelled"),
        ("CANCELLED", "DependencyNeverSatisfied"): ("CANCELLED", "dependency_failed"),
        ("PENDING", "DependencyNeverSatisfied"): ("CANCELLED", "dependency_failed"),
        ("SOMETHING_NEW", ""): ("RUNNING", "slurm:something_new"),
    }
    for (state, reason), want in cases.items():
        assert map_slurm_state([state], reason) == want, state


def test_sacct_and_small_parsers():
    text = "5_[2-5%2]|5|CANCELLED by 0|0:0|0:0|JobArrayTaskLimit|root||gpu|None|2026|00:00:00|0\n" \
           "7|7|FAILED|0:9|0:0|None|root|vm|gpu|x|y|00:00:01|0\n"  # fmt: skip
    rows = parse_sacct(text)
    assert sacct_lookup(rows, "5_3")["State"] == "CANCELLED by 0"
    assert sacct_lookup(rows, "5_7") is None
    assert parse_exit_status(rows["7"]["ExitCode"]) == (0, 9)
    assert parse_exit_status(768) == (3, 0)
    assert parse_gres("gpu:a100:4(S:0-1),gpu:v100:2,mps:100") == {"a100": 4, "v100": 2}
    assert parse_gres("gpu:2") == {"": 2}
    assert parse_gres("(null)") == {}
    assert format_time_limit(30) == "00:01:00"
    assert format_time_limit(2 * 86400 + 61) == "2-00:02:00"


def test_traitlets_are_configurable():
    from traitlets.config import Config

    c = Config()
    c.SlurmBackend.partition = "gpu-a100"
    c.SlurmBackend.sbatch_command = "/opt/tacc/bin/sbatch"
    c.SlurmBackend.agent_defaults = {"AlphaCal": {"mem": "64G"}}
    backend = SlurmBackend(work_dir="/tmp", python="/usr/bin/python3", config=c)
    assert backend.partition == "gpu-a100"
    assert backend.job_name_template == "chl-{agent}-{job_id}"
    from cosmic_horizons_lab.backends.base import LaunchSpec

    spec = LaunchSpec(job_id="j1", job_dir="/tmp/j1", agent="AlphaCal", user="u", gpu_count=2,
                      max_runtime_seconds=3600, correlation_id="c1")  # fmt: skip
    script = backend.render_script(spec)
    for line in ("--job-name=chl-AlphaCal-j1", "--partition=gpu-a100", "--mem=64G", "--gres=gpu:2",
                 "--time=01:00:00", "--output=/tmp/j1/stdout.log"):  # fmt: skip
        assert f"#SBATCH {line}" in script, line
    assert script.rstrip().endswith("exec /usr/bin/python3 -m cosmic_horizons_lab.executor /tmp/j1")
    assert backend.agent_defaults["AlphaCal"]["mem"] == "64G"
    for name in ("partition", "account", "qos", "gres_type", "extra_directives", "agent_defaults",
                 "sbatch_command", "squeue_command", "sacct_command", "scancel_command", "sinfo_command",
                 "min_poll_interval", "poll_backoff_max", "submit_timeout", "script_preamble"):  # fmt: skip
        assert SlurmBackend.class_traits()[name].help, name


def test_node_states_for_resources():
    from cosmic_horizons_lab.backends.slurm import _node_usable

    for state in ("idle", "mixed", "allocated", "completing", "idle*"[:-1]):
        assert _node_usable(state), state
    for state in ("down*", "drained", "draining", "mixed+drain", "idle+drain", "fail", "maint", "unknown*"):
        assert not _node_usable(state), state
