"""SlurmBackend against a real single-node Slurm: submission, states, arrays, pipelines."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cosmic_horizons_lab.backends.slurm import SlurmSubmitError

from .conftest import make_backend, make_job, records, wait_for_accounting, wait_until

pytestmark = pytest.mark.timeout(120)


async def test_success_runs_executor_with_gpu_and_correlation_id(backend, work):
    code = (
        "import os, sys\n"
        "from cosmic_horizons_lab.executor import report\n"
        "report(progress=0.5, visibilities_processed=10)\n"
        "print('CVD=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))\n"
        "print('CID=' + os.environ['COSMIC_HORIZONS_CORRELATION_ID'])\n"
        "print('CWD=' + os.getcwd())\n"
        "print('PY=' + sys.executable)\n"
        "import time; time.sleep(1.5)\n"
        "result = {'ok': True}\n"
    )
    spec = make_job(work, "ok", code, gpu_count=1)
    bid = await backend.submit(spec)
    assert bid.isdigit()
    history: dict[str, list[str]] = {}
    states = await wait_until(backend, [bid], history=history)
    st = states[bid]
    assert st.status == "COMPLETED", st
    assert st.exit_code == 0
    assert history[bid][-1] == "COMPLETED"
    assert "RUNNING" in history[bid], history
    assert set(history[bid]) <= {"QUEUING", "RUNNING", "COMPLETED"}
    log = (spec.job_dir / "stdout.log").read_text()
    assert "CVD=0" in log or "CVD=1" in log, log  # --gres=gpu:1 on the fake GPUs
    assert "CID=corr-ok" in log
    assert f"CWD={spec.job_dir}" in log
    assert f"PY={backend.python}" in log
    recs = records(spec.job_dir)
    assert recs[0]["type"] == "started"
    assert any(r["type"] == "progress" and r.get("progress") == 0.5 for r in recs)
    assert recs[-1] == {**recs[-1], "type": "result"}
    assert recs[-1]["result"]["result"] == {"ok": True}
    script = (spec.job_dir / "slurm.sbatch").read_text()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --job-name=chltest-Script-ok" in script
    # terminal states are cached: no more Slurm commands for this job
    before = dict(backend.command_counts)
    again = await backend.poll([bid])
    assert again[bid] is st and backend.command_counts == before


async def test_no_gpu_job_gets_no_gres(backend, work):
    spec = make_job(work, "cpu", "import os\nprint('CVD=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))\n")
    bid = await backend.submit(spec)
    st = (await wait_until(backend, [bid]))[bid]
    assert st.status == "COMPLETED"
    assert "--gres" not in (spec.job_dir / "slurm.sbatch").read_text()
    assert "CVD=unset" in (spec.job_dir / "stdout.log").read_text()


async def test_exit_3_is_failed_with_exit_code(backend, work):
    spec = make_job(work, "exit3", "import sys\nsys.exit(3)\n")
    bid = await backend.submit(spec)
    st = (await wait_until(backend, [bid]))[bid]
    assert st.status == "FAILED"
    assert st.exit_code == 3
    assert st.reason == "exit_code"
    assert st.detail["slurm_state"].startswith("FAILED")
    assert st.detail["exit_code_raw"] in ("3:0",)


async def test_exception_is_exit_1(backend, work):
    spec = make_job(work, "boom", "raise RuntimeError('boom')\n")
    bid = await backend.submit(spec)
    st = (await wait_until(backend, [bid]))[bid]
    assert (st.status, st.exit_code) == ("FAILED", 1)
    assert any("boom" in r.get("error", "") for r in records(spec.job_dir))


async def test_scancel_running_job(backend, work):
    spec = make_job(work, "sleeper", "import time\ntime.sleep(300)\n")
    bid = await backend.submit(spec)
    await wait_until(backend, [bid], lambda s: s.status == "RUNNING", timeout=30)
    await backend.cancel(bid)
    st = (await wait_until(backend, [bid], timeout=30))[bid]
    assert st.status == "CANCELLED"
    assert st.reason == "cancelled"
    assert st.detail.get("cancelled_by") == "root" and st.detail.get("cancelled_by_uid") == 0
    assert st.detail.get("cancel_requested") is True


async def test_scancel_pending_job(backend, work):
    spec = make_job(work, "held", "print('never')\n")
    held = make_backend(work, extra_directives=["--hold"])
    bid = await held.submit(spec)
    st = (await held.poll([bid]))[bid]
    assert st.status == "QUEUING"
    assert st.detail["slurm_reason"] in ("JobHeldUser", "JobHeldAdmin")
    await held.cancel(bid)
    st = (await wait_until(held, [bid], timeout=30))[bid]
    assert st.status == "CANCELLED"
    assert not (spec.job_dir / "events.jsonl").exists()


async def test_cancel_unknown_job_is_quiet(backend):
    # scancel exits 0 for an id it does not know; the next poll decides (lost)
    await backend.cancel("7654321")
    st = (await backend.poll(["7654321"]))["7654321"]
    assert (st.status, st.reason) == ("FAILED", "lost")


async def test_out_of_memory(work):
    """A job over its --mem. With cgroups (task/cgroup, where scripts/slurm-cluster finds a
    writable memory controller, as on this machine kind) the kernel's OOM killer ends it and
    Slurm says OUT_OF_MEMORY. Without, OverMemoryKill (jobacct_gather) kills the step, Slurm
    says FAILED, signal 9, and slurmstepd writes why into the log, which the backend reads."""
    backend = make_backend(work, agent_defaults={"Script": {"mem": "100M"}})
    code = "import time\na = []\nfor i in range(100):\n    a.append(bytearray(20 * 2**20)); time.sleep(0.05)\n"
    spec = make_job(work, "oom", code)
    bid = await backend.submit(spec)
    assert "#SBATCH --mem=100M" in (spec.job_dir / "slurm.sbatch").read_text()
    st = (await wait_until(backend, [bid], timeout=60))[bid]
    assert st.status == "FAILED", st
    assert st.reason == "out_of_memory", st
    assert st.exit_code == -9
    cgroups = "TaskPlugin=task/cgroup" in Path(os.environ["SLURM_CONF"]).read_text()
    if cgroups:
        assert st.detail["slurm_state"].startswith("OUT_OF_MEMORY"), st
    else:
        assert "exceeded" in (spec.job_dir / "stdout.log").read_text().lower()


async def test_directives_from_traitlets_and_partition(work):
    backend = make_backend(
        work,
        partition="debug",
        qos="normal",
        extra_directives=["--comment=from-extra"],
        agent_defaults={"Script": {"mem": "200M", "time": "00:05:00"}},
        script_preamble=["export FROM_PREAMBLE=yes"],
    )
    code = "import os\nprint('PRE=' + os.environ.get('FROM_PREAMBLE', 'no'))\n"
    spec = make_job(work, "directives", code)
    spec.env["EXTRA_VAR"] = "a b"
    bid = await backend.submit(spec)
    script = (spec.job_dir / "slurm.sbatch").read_text()
    for line in ("--partition=debug", "--qos=normal", "--comment=from-extra", "--mem=200M",
                 "--time=00:05:00", f"--output={spec.job_dir}/stdout.log"):  # fmt: skip
        assert f"#SBATCH {line}" in script, (line, script)
    assert "export EXTRA_VAR='a b'" in script
    st = (await wait_until(backend, [bid]))[bid]
    assert st.status == "COMPLETED"
    assert st.detail.get("partition") == "debug"
    assert "PRE=yes" in (spec.job_dir / "stdout.log").read_text()


async def test_max_runtime_becomes_time_limit(backend, work):
    spec = make_job(work, "limit", "pass\n", max_runtime=90 * 60 + 1)
    await backend.submit(spec)
    assert "#SBATCH --time=01:31:00" in (spec.job_dir / "slurm.sbatch").read_text()


async def test_rejected_submission_is_permanent_error(work):
    backend = make_backend(work, partition="no-such-partition")
    with pytest.raises(SlurmSubmitError) as err:
        await backend.submit(make_job(work, "bad", "pass\n"))
    assert "partition" in str(err.value).lower()
    health = await backend.health()
    assert health["ok"] is False and "no-such-partition" in health["reason"]


async def test_array_with_parallel_limit(backend, work):
    code = (
        "import json, os, sys, time\n"
        "t0 = time.time(); time.sleep(2.0); t1 = time.time()\n"
        "open('outputs/span.json', 'w').write(json.dumps([t0, t1, os.environ['COSMIC_HORIZONS_CORRELATION_ID']]))\n"
        "if os.path.basename(os.getcwd()) == 'el3':\n"
        "    sys.exit(3)\n"
    )
    specs = [make_job(work, f"el{i}", code) for i in range(6)]
    ids = await backend.submit_array(specs, parallel_limit=2)
    array_id = ids[0].split("_")[0]
    assert ids == [f"{array_id}_{i}" for i in range(6)]
    history: dict[str, list[str]] = {}
    max_running = 0
    deadline = time.monotonic() + 90
    while True:
        states = await backend.poll(ids)
        max_running = max(max_running, sum(1 for s in states.values() if s.status == "RUNNING"))
        for bid, st in states.items():
            seq = history.setdefault(bid, [])
            if not seq or seq[-1] != st.status:
                seq.append(st.status)
        if all(s.status in ("COMPLETED", "FAILED", "CANCELLED") for s in states.values()) and len(states) == 6:
            break
        assert time.monotonic() < deadline, states
        await __import__("asyncio").sleep(0.2)
    assert 1 <= max_running <= 2
    assert {bid: st.status for bid, st in states.items()} == {
        bid: ("FAILED" if i == 3 else "COMPLETED") for i, bid in enumerate(ids)
    }
    assert states[ids[3]].exit_code == 3
    # Each element ran in its own job directory, with its own correlation id and log.
    spans = []
    for i, spec in enumerate(specs):
        t0, t1, cid = json.loads((spec.job_dir / "outputs" / "span.json").read_text())
        assert cid == f"corr-el{i}"
        spans.append((t0, t1))
        assert (spec.job_dir / "stdout.log").exists()
        assert records(spec.job_dir)[0]["type"] == "started"
    # never more than two at once, measured by the jobs themselves
    points = sorted([(t0, 1) for t0, _ in spans] + [(t1, -1) for _, t1 in spans], key=lambda p: (p[0], p[1]))
    running = peak = 0
    for _, delta in points:
        running += delta
        peak = max(peak, running)
    assert peak <= 2, spans
    # the pending remainder of the array showed as QUEUING for the later elements
    assert history[ids[5]][0] == "QUEUING"


async def test_cancel_one_array_element(backend, work):
    specs = [make_job(work, f"c{i}", "import time\ntime.sleep(300)\n") for i in range(3)]
    ids = await backend.submit_array(specs, parallel_limit=1)
    await wait_until(backend, ids[:1], lambda s: s.status == "RUNNING", timeout=30)
    await backend.cancel(ids[2])  # still pending inside the array
    st = (await wait_until(backend, [ids[2]], timeout=30))[ids[2]]
    assert st.status == "CANCELLED"
    states = await backend.poll(ids)
    assert states[ids[0]].status == "RUNNING" and states[ids[1]].status == "QUEUING"
    for bid in ids[:2]:
        await backend.cancel(bid)
    states = await wait_until(backend, ids, timeout=30)
    assert all(s.status == "CANCELLED" for s in states.values())


async def test_afterok_pipeline(backend, work):
    parent = make_job(
        work, "parent", "import time\ntime.sleep(2)\nopen('outputs/cal.txt','w').write('calibrated')\n"
    )
    pid = await backend.submit(parent)
    child_code = (
        f"data = open({str(parent.job_dir / 'outputs' / 'cal.txt')!r}).read()\n"
        "open('outputs/image.txt','w').write(data + '+imaged')\n"
    )
    child = make_job(work, "child", child_code, after_ok=[pid])
    cid = await backend.submit(child)
    st = (await backend.poll([cid]))[cid]
    assert st.status == "QUEUING"
    assert "#SBATCH --dependency=afterok:" + pid in (child.job_dir / "slurm.sbatch").read_text()
    states = await wait_until(backend, [pid, cid], timeout=60)
    assert states[pid].status == "COMPLETED" and states[cid].status == "COMPLETED", states
    assert (child.job_dir / "outputs" / "image.txt").read_text() == "calibrated+imaged"
    parent_end = [r for r in records(parent.job_dir) if r["type"] == "result"][0]["ts"]
    child_start = records(child.job_dir)[0]["ts"]
    assert child_start > parent_end


async def test_failed_parent_cascade(backend, work):
    parent = make_job(work, "p", "import sys, time\ntime.sleep(1)\nsys.exit(3)\n")
    pid = await backend.submit(parent)
    child = make_job(work, "c", "print('child ran')\n", after_ok=[pid])
    cid = await backend.submit(child)
    grandchild = make_job(work, "g", "print('grandchild ran')\n", after_ok=[cid])
    gid = await backend.submit(grandchild)
    states = await wait_until(backend, [pid, cid, gid], timeout=60)
    assert (states[pid].status, states[pid].exit_code) == ("FAILED", 3)
    for bid in (cid, gid):
        st = states[bid]
        assert st.status == "CANCELLED", st
        assert st.reason == "dependency_failed", st
        assert st.detail["slurm_reason"] in ("DependencyNeverSatisfied", "Dependency")
        assert st.detail["after_ok"] == ([pid] if bid == cid else [cid])
    assert not (child.job_dir / "events.jsonl").exists()
    assert not (grandchild.job_dir / "events.jsonl").exists()


async def test_dependency_never_satisfied_without_kill_flag(work):
    """On a cluster where Slurm leaves such a child pending forever, the backend cancels it."""
    backend = make_backend(work, kill_on_invalid_dependency=False)
    pid = await backend.submit(make_job(work, "p2", "import sys\nsys.exit(3)\n"))
    child = make_job(work, "c2", "print('child ran')\n", after_ok=[pid])
    cid = await backend.submit(child)
    assert "kill-on-invalid-dep" not in (child.job_dir / "slurm.sbatch").read_text()
    st = (await wait_until(backend, [pid, cid], timeout=60))[cid]
    assert (st.status, st.reason) == ("CANCELLED", "dependency_failed")
    assert "afterok" in st.detail.get("dependency", "")
    # and Slurm no longer holds it pending
    fresh = make_backend(work)
    again = (await wait_until(fresh, [cid], timeout=30))[cid]
    assert again.status == "CANCELLED"


async def test_one_squeue_per_poll_whatever_the_number_of_jobs(work):
    backend = make_backend(work, extra_directives=["--hold"])
    specs = [make_job(work, f"h{i}", "pass\n") for i in range(30)]
    ids = [await backend.submit(s) for s in specs]
    await backend.poll(ids[:1])
    before = dict(backend.command_counts)
    states = await backend.poll(ids)
    assert all(s.status == "QUEUING" for s in states.values()) and len(states) == 30
    delta = {k: v - before.get(k, 0) for k, v in backend.command_counts.items() if v != before.get(k, 0)}
    assert delta == {"squeue": 1}
    # the poll rate limit: a second poll within min_poll_interval costs nothing
    limited = make_backend(work, min_poll_interval=30.0)
    await limited.poll(ids)
    await limited.poll(ids)
    assert limited.command_counts == {"squeue": 1}
    for bid in ids:
        await backend.cancel(bid)
    assert all(s.status == "CANCELLED" for s in (await wait_until(backend, ids, timeout=30)).values())


async def test_resources_from_sinfo(backend, work, slurm_cluster):
    pools = {p.name: p for p in await backend.resources()}
    assert set(pools) == {"gpu", "debug", "requeue", "urgent"}
    assert pools["gpu"].total == 2 and pools["gpu"].backend == "slurm"
    assert pools["gpu"].detail["default_partition"] is True
    free_before = pools["gpu"].free
    spec = make_job(work, "gpuhog", "import time\ntime.sleep(300)\n", gpu_count=1)
    bid = await backend.submit(spec)
    await wait_until(backend, [bid], lambda s: s.status == "RUNNING", timeout=30)
    pools = {p.name: p for p in await backend.resources()}
    assert pools["gpu"].free == free_before - 1
    assert pools["debug"].free == free_before - 1  # the same node serves both partitions
    await backend.cancel(bid)
    await wait_until(backend, [bid], timeout=30)


async def test_health(backend):
    health = await backend.health()
    assert health["ok"] is True, health
    assert set(health["partitions"]) == {"gpu", "debug", "requeue", "urgent"}
    assert backend.supported_features() >= {"cancel", "arrays", "dependencies"}


async def test_finished_job_exit_code_from_accounting(backend, work):
    """A fresh backend (as after a server restart) gets the exit code of an ended job from sacct."""
    spec = make_job(work, "ended", "import sys\nsys.exit(3)\n")
    bid = await backend.submit(spec)
    await wait_until(backend, [bid])
    await wait_for_accounting(bid)  # what this test reads; the queue may say it first
    fresh = make_backend(work)
    st = (await fresh.poll([bid]))[bid]
    assert (st.status, st.exit_code, st.detail["source"]) == ("FAILED", 3, "sacct")
    assert fresh.command_counts == {"squeue": 1, "sacct": 1}


async def test_requeued_job_is_queuing_again(backend, work):
    """A requeued job (preemption with requeue, node failure, scontrol requeue) goes back to
    QUEUING with its restart count; Slurm holds it ~2 minutes (cred_expire) before rerunning."""
    import subprocess

    spec = make_job(work, "requeue", "import time\ntime.sleep(300)\n")
    bid = await backend.submit(spec)
    await wait_until(backend, [bid], lambda s: s.status == "RUNNING", timeout=30)
    for _ in range(100):  # Slurm says RUNNING a moment before the executor has started
        if records(spec.job_dir):
            break
        time.sleep(0.1)
    subprocess.run(["scontrol", "requeue", bid], check=True, capture_output=True)
    st = (await wait_until(backend, [bid], lambda s: s.status == "QUEUING", timeout=30))[bid]
    assert st.detail["restarts"] == 1
    assert st.detail["slurm_state"].startswith("PENDING")
    await backend.cancel(bid)
    st = (await wait_until(backend, [bid], timeout=30))[bid]
    assert (st.status, st.reason) == ("CANCELLED", "cancelled")
    # the executor had started once, and the log is appended to, not truncated, on a rerun
    assert [r["type"] for r in records(spec.job_dir)][:1] == ["started"]


async def test_preempted_job_is_failed_preempted(backend, work):
    """A job in a higher-tier partition that needs both GPUs preempts (cancels) ours."""
    victim = make_job(work, "victim", "import time\ntime.sleep(300)\n", gpu_count=1)
    vid = await backend.submit(victim)
    await wait_until(backend, [vid], lambda s: s.status == "RUNNING", timeout=30)
    urgent_backend = make_backend(work, partition="urgent")
    uid = await urgent_backend.submit(make_job(work, "urgent", "pass\n", gpu_count=2))
    st = (await wait_until(backend, [vid], timeout=60))[vid]
    assert (st.status, st.reason) == ("FAILED", "preempted"), st
    assert st.detail["slurm_state"].startswith("PREEMPTED")
    assert (await wait_until(urgent_backend, [uid], timeout=60))[uid].status == "COMPLETED"


async def test_preempted_job_in_a_requeue_partition_is_queuing_again(work):
    """With PreemptMode=REQUEUE the preempted job is not lost: it goes back to the queue
    (QUEUING, reason requeued, restart count), to run again once the urgent job is done."""
    victim_backend = make_backend(work, partition="requeue")
    victim = make_job(work, "victim-rq", "import time\ntime.sleep(300)\n", gpu_count=1)
    vid = await victim_backend.submit(victim)
    await wait_until(victim_backend, [vid], lambda s: s.status == "RUNNING", timeout=30)
    urgent_backend = make_backend(work, partition="urgent")
    uid = await urgent_backend.submit(make_job(work, "urgent-rq", "pass\n", gpu_count=2))
    st = (await wait_until(victim_backend, [vid], lambda s: s.status != "RUNNING", timeout=60))[vid]
    assert (st.status, st.reason) == ("QUEUING", "requeued"), st
    assert st.detail["restarts"] == 1
    assert (await wait_until(urgent_backend, [uid], timeout=60))[uid].status == "COMPLETED"
    await victim_backend.cancel(vid)  # Slurm holds a requeued job ~2 min before its rerun
    assert (await wait_until(victim_backend, [vid], timeout=30))[vid].status == "CANCELLED"


async def test_batch_with_different_gpu_counts_is_one_array_per_count(backend, work):
    specs = [make_job(work, f"g{i}", "pass\n", gpu_count=i % 2) for i in range(4)]
    ids = await backend.submit_array(specs, parallel_limit=2)
    arrays = {bid.split("_")[0] for bid in ids}
    assert len(arrays) == 2 and ids[0].split("_")[0] == ids[2].split("_")[0]
    states = await wait_until(backend, ids, timeout=60)
    assert all(s.status == "COMPLETED" for s in states.values()), states


async def test_batch_failing_halfway_is_cancelled_whole(work, tmp_path, slurm_cluster):
    import subprocess

    from cosmic_horizons_lab.backends.base import BackendUnavailable

    count = tmp_path / "calls"
    wrapper = tmp_path / "flaky-sbatch"
    wrapper.write_text(
        f'#!/bin/bash\necho x >> {count}\n'
        f'if [ "$(wc -l < {count})" -ge 2 ]; then\n'
        '  echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)" >&2\n'
        f'  exit 1\nfi\nsbatch "$@" | tee -a {tmp_path / "ids"}\nexit ${{PIPESTATUS[0]}}\n'
    )
    wrapper.chmod(0o755)
    flaky = make_backend(work, sbatch_command=str(wrapper), extra_directives=["--hold"])
    specs = [make_job(work, f"f{i}", "pass\n", gpu_count=i % 2) for i in range(4)]
    with pytest.raises(BackendUnavailable):
        await flaky.submit_array(specs, parallel_limit=2)
    first = (tmp_path / "ids").read_text().strip().split(";")[0]
    assert first.isdigit()
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--array", f"--jobs={first}",
                          "--format=%i %T"], capture_output=True, text=True).stdout  # fmt: skip
    states = [line.split()[1] for line in out.splitlines() if line.strip()]
    assert states and all(state == "CANCELLED" for state in states), out


async def test_drained_node_offers_no_free_gpus(backend, slurm_cluster):
    import subprocess

    node = slurm_cluster.host
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=chl-test"], check=True)
    try:
        pools = {p.name: p for p in await backend.resources()}
        assert pools["gpu"].total == 2 and pools["gpu"].free == 0
        assert pools["gpu"].detail["gpus_down"] == 2
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=True)
    pools = {p.name: p for p in await backend.resources()}
    assert pools["gpu"].detail["gpus_down"] == 0
