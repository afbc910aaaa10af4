"""The local backend's fork server against its reference, the shell starter it replaces.

The same jobs are started both ways (``LocalBackend.fork_server`` on and off) and must leave the
same traces: the exit status the shell records (``$?``, ``128 + n`` for a crash by signal ``n``),
the launch token with the job's pid, the executor's records, the backend's verdict. A cancel
kills the job's whole group either way, and a fork server whose server went still records the
exit status of the jobs it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from cosmic_horizons_lab.backends.base import LaunchSpec
from cosmic_horizons_lab.backends.local import LocalBackend
from cosmic_horizons_lab.protocol import jobdir

SCRIPTS = {
    "ok": "from cosmic_horizons_lab.executor import report\nreport(progress=1.0)\nprint('hello')\n",
    "exit3": "import sys\nsys.exit(3)\n",
    "raises": "raise ValueError('no')\n",
    "crash": "import os\nos.abort()\n",
    "env": ("import os, pathlib\npathlib.Path('outputs/env.json').write_text(__import__('json').dumps("
            "{k: os.environ.get(k) for k in ('CUDA_VISIBLE_DEVICES', 'COSMIC_HORIZONS_CORRELATION_ID', 'X_JOB')}"
            " | {'cwd': os.getcwd(), 'nice': os.nice(0), 'sid': os.getsid(0)}))\n"),
}
SLEEP = "import time\ntime.sleep(60)\n"


def _spec(root: Path, name: str, code: str) -> LaunchSpec:
    (root / f"{name}.py").write_text(code)
    job_id = uuid.uuid4().hex
    job_dir = jobdir.job_dir(root / "jobs", "u", job_id)
    jobdir.write_job_file(job_dir, {
        "id": job_id, "agent": "Script", "params": {"path": f"{name}.py"}, "dataset": None, "inputs": [],
        "correlation_id": "c-" + name, "user": "u", "server_root": str(root), "attempt": 1,
        "sample_interval": 1.0,
    })
    return LaunchSpec(job_id=job_id, job_dir=job_dir, agent="Script", user="u", gpu_count=0,
                      max_runtime_seconds=None, correlation_id="c-" + name, launch_token="chl" + uuid.uuid4().hex,
                      env={"X_JOB": name})


async def _until_ended(backend: LocalBackend, bid: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = (await backend.poll([bid]))[bid]
        if state.status != "RUNNING":
            return state
        await asyncio.sleep(0.05)
    raise TimeoutError(bid)


def _backend(root: Path, fork: bool) -> LocalBackend:
    backend = LocalBackend(slots=8, gpus=[], work_dir=root / "jobs", python=sys.executable)
    backend.fork_server = fork
    return backend


def _traces(spec: LaunchSpec, bid: str) -> dict:
    records = jobdir.read_records(spec.job_dir, 0)[0]
    exit_file = spec.job_dir / jobdir.EXIT_FILE
    return {
        "exit_code": exit_file.read_text().strip() if exit_file.exists() else None,
        "token": jobdir.read_launch_token(spec.job_dir) == (spec.launch_token, bid),
        "records": [r["type"] for r in records if r["type"] != "progress"],
        "log_has_output": "hello" in (spec.job_dir / jobdir.LOG_FILE).read_text(),
        "env": json.loads((spec.job_dir / "outputs" / "env.json").read_text())
        if (spec.job_dir / "outputs" / "env.json").exists() else None,
    }


async def test_forked_jobs_leave_what_the_shell_starter_leaves(tmp_path):
    got = {}
    for fork in (True, False):
        root = tmp_path / ("fork" if fork else "shell")
        root.mkdir()
        backend = _backend(root, fork)
        try:
            specs = {name: _spec(root, name, code) for name, code in SCRIPTS.items()}
            bids = {name: await backend.submit(spec) for name, spec in specs.items()}
            for name, bid in bids.items():
                state = await _until_ended(backend, bid)
                trace = _traces(specs[name], bid)
                if trace["env"]:
                    trace["env"]["cwd"] = trace["env"]["cwd"] == str(specs[name].job_dir)
                    trace["env"]["sid"] = trace["env"]["sid"] != os.getsid(0)  # a session of its own
                got[(fork, name)] = (state.status, state.exit_code, state.reason, trace)
        finally:
            await backend.stop()
    for name in SCRIPTS:
        assert got[(True, name)] == got[(False, name)], name
    # and what they say is what each script did (so the comparison is not of two empty traces)
    assert got[(True, "ok")][:2] == ("COMPLETED", 0) and got[(True, "ok")][3]["log_has_output"]
    assert got[(True, "exit3")][:2] == ("FAILED", 3)
    assert got[(True, "crash")][:2] == ("FAILED", 128 + 6)  # SIGABRT, as the shell reports it
    assert got[(True, "env")][3]["env"] == {"CUDA_VISIBLE_DEVICES": "", "COSMIC_HORIZONS_CORRELATION_ID": "c-env",
                                            "X_JOB": "env", "cwd": True, "nice": 10, "sid": True}
    assert all(trace["token"] for *_, trace in got.values())


async def test_a_cancelled_forked_job_dies_with_its_group_and_leaves_no_exit_status(tmp_path):
    backend = _backend(tmp_path, True)
    try:
        spec = _spec(tmp_path, "sleep", SLEEP)
        bid = await backend.submit(spec)
        deadline = time.monotonic() + 30
        while not jobdir.read_records(spec.job_dir, 0)[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert os.getpgid(int(bid)) == int(bid)
        await backend.cancel(bid)
        state = await _until_ended(backend, bid, 30)
        assert (state.status, state.reason) == ("CANCELLED", "cancelled")
        assert not (spec.job_dir / jobdir.EXIT_FILE).exists()
        assert backend.free_slots(0) == 8
    finally:
        await backend.stop()


async def test_a_fork_server_whose_server_went_still_records_its_jobs_then_exits(tmp_path):
    backend = _backend(tmp_path, True)
    spec = _spec(tmp_path, "short", "import time\ntime.sleep(1.0)\n")
    bid = await backend.submit(spec)
    forker = psutil.Process(backend._forker.proc.pid)
    await backend.stop()  # as the server's end of the pipe closing when it dies
    assert forker.is_running() and psutil.pid_exists(int(bid))
    forker.wait(30)  # it waits for its job, then ends
    assert (spec.job_dir / jobdir.EXIT_FILE).read_text().strip() == "0"
    assert not psutil.pid_exists(int(bid))
    assert jobdir.read_launch_token(spec.job_dir) == (spec.launch_token, bid)


DEMO = Path(__file__).resolve().parents[1] / "cosmic_horizons_lab" / "data" / "day2_TDEM0003_10s_norx_1src_1spw.uvfits"


def _image_spec(root: Path, name: str) -> LaunchSpec:
    """A real science job: a 128² dirty image (and PSF) of the shipped VLA observation."""
    job_id = uuid.uuid4().hex
    job_dir = jobdir.job_dir(root / "jobs", "u", job_id)
    jobdir.write_job_file(job_dir, {
        "id": job_id, "agent": "ImageReconstruction", "params": {"npix": 128, "niter": 0, "gpu_count": 0},
        "dataset": {"id": "VLA.TDEM0003.1src", "path": str(DEMO), "format": "uvfits"}, "inputs": [],
        "correlation_id": "c-" + name, "user": "u", "server_root": str(root), "attempt": 1,
        "sample_interval": 1.0,
    })
    return LaunchSpec(job_id=job_id, job_dir=job_dir, agent="ImageReconstruction", user="u", gpu_count=0,
                      max_runtime_seconds=None, correlation_id="c-" + name, launch_token="chl" + uuid.uuid4().hex)


async def _warm_spare(backend: LocalBackend, timeout: float = 120.0) -> int:
    """Start the fork server (with a throwaway Script job) and wait until its spare is warm."""
    assert backend._forker is not None
    log = backend.work_dir / "forkserver.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        warm = [line for line in text.splitlines() if line.startswith("spare ") and ": warm" in line]
        if warm:
            return int(warm[-1].split()[1].rstrip(":"))
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no warm spare: {text}")


async def test_a_science_job_runs_in_the_warm_spare_and_computes_what_a_fresh_process_computes(tmp_path):
    """The spare's image is the fresh process's image, and it keeps the starter's contract: the
    token names its pid, its own session, the jobs' niceness; a Script job never takes it."""
    from astropy.io import fits

    images, pids = {}, {}
    for spare in (True, False):
        root = tmp_path / ("spare" if spare else "fresh")
        root.mkdir()
        backend = _backend(root, True)
        backend.warm_spare = spare
        try:
            script = _spec(root, "env", SCRIPTS["env"])
            first = await backend.submit(script)  # starts the fork server
            assert (await _until_ended(backend, first)).status == "COMPLETED"
            warm_pid = await _warm_spare(backend) if spare else None
            assert first != str(warm_pid)  # a Script job never takes the spare
            spec = _image_spec(root, "img")
            bid = await backend.submit(spec)
            pids[spare] = (bid, warm_pid)
            if spare:
                assert bid == str(warm_pid)
                proc = psutil.Process(int(bid))
                assert proc.nice() == 10 and os.getsid(int(bid)) == int(bid)
            state = await _until_ended(backend, bid, 300)
            assert (state.status, state.exit_code) == ("COMPLETED", 0), (spec.job_dir / jobdir.LOG_FILE).read_text()
            assert jobdir.read_launch_token(spec.job_dir) == (spec.launch_token, bid)
            images[spare] = [fits.getdata(spec.job_dir / "outputs" / f"{name}.fits").squeeze()
                             for name in ("dirty", "psf")]
        finally:
            await backend.stop()
    (dirty, psf), (fresh_dirty, fresh_psf) = images[True], images[False]
    assert dirty.shape == (128, 128) and abs(float(psf.max()) - 1.0) < 1e-3  # a PSF peaks at 1
    assert abs(dirty).max() > 0
    for ours, fresh in ((dirty, fresh_dirty), (psf, fresh_psf)):
        assert abs(ours - fresh).max() <= 1e-6 * abs(fresh).max()


async def test_the_spare_is_not_used_when_the_jobs_threads_differ_and_exits_with_its_fork_server(tmp_path):
    backend = _backend(tmp_path, True)
    try:
        first = await backend.submit(_spec(tmp_path, "ok", SCRIPTS["ok"]))
        await _until_ended(backend, first)
        warm_pid = await _warm_spare(backend)
        spec = _image_spec(tmp_path, "img")
        spec.env["OMP_NUM_THREADS"] = "1" if os.environ.get("OMP_NUM_THREADS") != "1" else "2"
        bid = await backend.submit(spec)
        assert bid != str(warm_pid) and psutil.pid_exists(warm_pid)
        assert (await _until_ended(backend, bid, 300)).status == "COMPLETED"
    finally:
        await backend.stop()
    psutil.Process(warm_pid).wait(30)  # told its job will not come, the spare ends


async def test_a_spare_warms_only_while_no_job_runs(tmp_path):
    """No spare is made while a job runs; one still warming when a job starts is stopped
    (SIGSTOP) until no job runs, then warms and is used: warming beside a job slowed the job."""
    backend = _backend(tmp_path, True)
    try:
        first = await backend.submit(_spec(tmp_path, "sleep1", "import time\ntime.sleep(1.5)\n"))
        server = psutil.Process(backend._forker.proc.pid)
        while (await backend.poll([first]))[first].status == "RUNNING":
            assert [c.pid for c in server.children()] in ([int(first)], [])  # no spare beside it
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 10
        while not (spares := [c for c in server.children() if c.pid != int(first)]):
            assert time.monotonic() < deadline, "no spare after the job ended"
            await asyncio.sleep(0.01)
        (spare,) = spares
        log = backend.work_dir / "forkserver.log"
        assert f"spare {spare.pid}: warm" not in log.read_text()  # still importing (seconds)
        second = await backend.submit(_spec(tmp_path, "sleep2", "import time\ntime.sleep(2)\n"))
        assert second != str(spare.pid)  # a Script job never takes the spare
        deadline = time.monotonic() + 1
        while spare.status() != psutil.STATUS_STOPPED:
            assert time.monotonic() < deadline, spare.status()
            await asyncio.sleep(0.01)
        assert (await _until_ended(backend, second)).status == "COMPLETED"
        assert await _warm_spare(backend) == spare.pid  # continued once no job ran, then warm
        assert spare.status() != psutil.STATUS_STOPPED
        image = _image_spec(tmp_path, "img")
        assert await backend.submit(image) == str(spare.pid)
        assert (await _until_ended(backend, str(spare.pid), 300)).status == "COMPLETED"
    finally:
        await backend.stop()


@pytest.fixture(autouse=True)
def _no_strays(tmp_path):
    yield
    for local in tmp_path.glob("**/local.json"):
        try:
            os.killpg(json.loads(local.read_text())["pid"], 9)
        except (ProcessLookupError, PermissionError, ValueError, KeyError):
            pass
