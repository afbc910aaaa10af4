"""A real single-node Slurm cluster (scripts/slurm-cluster) for the Slurm backend's tests.

The session fixture starts slurmctld, slurmd, slurmdbd, MariaDB and munged (as
root) and points ``SLURM_CONF`` at the generated config. Without Slurm the
tests are skipped, except under ``CI=true``, where a Slurm that cannot be
installed or started is a failure.

Slow cases (the time limit ends a job only after a minute) are submitted as soon
as the cluster is up and checked by the last test file, so they overlap the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from cosmic_horizons_lab.backends.base import BackendJobState, BackendUnavailable, LaunchSpec
from cosmic_horizons_lab.backends.slurm import SlurmBackend

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm-cluster"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
USERS = ("chlalice", "chlbob")


def _unavailable(why: str) -> None:
    # A missing Slurm is a failure, never a skip: scripts/test installs and starts it.
    pytest.fail(f"the Slurm tests need a running test cluster (scripts/slurm-cluster): {why}", pytrace=False)


def sh(*argv: str, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, timeout=timeout, capture_output=True, text=True, **kw)


@dataclass
class Cluster:
    env: dict[str, str]
    host: str
    early: dict[str, Any] = field(default_factory=dict)

    def ctld_stop(self) -> None:
        sh(str(SCRIPT), "ctld-stop")

    def ctld_start(self) -> None:
        sh(str(SCRIPT), "ctld-start")

    def squeue_ids(self) -> set[str]:
        """Every job id squeue still shows (plain and array element ids)."""
        out = sh("squeue", "--noheader", "--states=all", "--format=%i").stdout
        return {line.strip() for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Cluster:
    if sys.platform != "linux":
        _unavailable("Linux only")
    if os.geteuid() != 0:
        _unavailable("the test cluster's daemons run as root; run the tests as root")
    if not shutil.which("slurmctld") or not shutil.which("sbatch"):
        if not CI:
            _unavailable("slurm-wlm is not installed (scripts/slurm-cluster install)")
        res = sh(str(SCRIPT), "install", check=False, timeout=600)
        if res.returncode != 0:
            _unavailable(f"install failed: {res.stderr[-2000:]}")
    res = sh(str(SCRIPT), "start", check=False, timeout=180)
    if res.returncode != 0:
        _unavailable(f"start failed: {res.stdout[-1000:]}{res.stderr[-3000:]}")
    env: dict[str, str] = {}
    for line in sh(str(SCRIPT), "env").stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value
    os.environ.update(env)
    cluster = Cluster(env=env, host=sh("hostname", "-s").stdout.strip())
    # Clean slate: jobs a previous run left behind would hold CPUs (only ours: the
    # cluster may be shared with other test runs on this machine).
    cancel_test_jobs()
    for user in USERS:
        if sh("id", user, check=False).returncode != 0:
            sh("useradd", "--no-create-home", "--shell", "/bin/bash", user)
    cluster.early = _submit_early(tmp_path_factory.mktemp("slurm-early"))
    return cluster


JOB_PREFIX = "chltest-"


def cancel_test_jobs() -> None:
    """scancel every job these tests submitted (their names start with JOB_PREFIX)."""
    out = sh("squeue", "--noheader", "--format=%A %j", check=False).stdout
    ids = [line.split()[0] for line in out.splitlines() if len(line.split()) == 2 and line.split()[1].startswith(JOB_PREFIX)]
    if ids:
        sh("scancel", *ids, check=False)


def _submit_early(base: Path) -> dict[str, Any]:
    """Jobs whose outcome takes long to show, submitted now and checked at the end."""

    async def go() -> dict[str, Any]:
        backend = make_backend(base)
        timeout_spec = make_job(base, "timeout", "import time\ntime.sleep(600)\n", max_runtime=30)
        exit3 = make_job(base, "exit3-early", "import sys\nsys.exit(3)\n")
        ids = {
            "timeout": await backend.submit(timeout_spec),
            "exit3": await backend.submit(exit3),
        }
        return {"ids": ids, "submitted": time.monotonic(), "dirs": {k: base / k for k in ids}}

    return asyncio.run(go())


# -- helpers shared by the tests -------------------------------------------------------


def make_backend(work_dir: Path, **config: Any) -> SlurmBackend:
    """A backend as the server makes it, tuned for tests: no poll rate limit, short grace."""
    config.setdefault("job_name_template", JOB_PREFIX + "{agent}-{job_id}")
    config.setdefault("min_poll_interval", 0.0)
    config.setdefault("poll_backoff_initial", 0.5)
    config.setdefault("poll_backoff_max", 2.0)
    config.setdefault("lost_grace_seconds", 0.0)
    config.setdefault("command_timeout", 20.0)
    config.setdefault("submit_timeout", 20.0)
    return SlurmBackend(work_dir=work_dir, python=sys.executable, **config)


def make_job(
    base: Path,
    name: str,
    code: str,
    *,
    gpu_count: int = 0,
    max_runtime: int | None = None,
    after_ok: list[str] | None = None,
    agent: str = "Script",
) -> LaunchSpec:
    """A job directory for the Script agent running ``code``; its LaunchSpec."""
    job_dir = base / name
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "x.py").write_text(code, encoding="utf-8")
    job = {"id": name, "agent": "Script", "params": {"path": "x.py"}, "server_root": str(job_dir),
           "correlation_id": f"corr-{name}", "user": "tester"}  # fmt: skip
    (job_dir / "job.json").write_text(json.dumps(job), encoding="utf-8")
    return LaunchSpec(
        job_id=name,
        job_dir=job_dir,
        agent=agent,
        user="tester",
        gpu_count=gpu_count,
        max_runtime_seconds=max_runtime,
        correlation_id=f"corr-{name}",
        after_ok=list(after_ok or []),
    )


async def wait_until(
    backend: SlurmBackend,
    ids: list[str],
    pred: Callable[[BackendJobState], bool] = lambda s: s.status in TERMINAL,
    timeout: float = 60.0,
    interval: float = 0.25,
    history: dict[str, list[str]] | None = None,
) -> dict[str, BackendJobState]:
    """Poll until every id satisfies ``pred``; records each id's status sequence in ``history``."""
    deadline = time.monotonic() + timeout
    states: dict[str, BackendJobState] = {}
    while True:
        try:
            states = await backend.poll(ids)
        except BackendUnavailable:
            # a busy controller (2 cores shared with other suites) or another run's
            # controller restart: the orchestrator retries, and so do we
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(interval)
            continue
        if history is not None:
            for bid, st in states.items():
                seq = history.setdefault(bid, [])
                if not seq or seq[-1] != st.status:
                    seq.append(st.status)
        if all(bid in states and pred(states[bid]) for bid in ids):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s; last states: {states}")
        await asyncio.sleep(interval)


async def wait_for_accounting(job_id: str, timeout: float = 30.0) -> str:
    """Wait until slurmdbd has recorded the job's end (it lags the controller); its State."""
    deadline = time.monotonic() + timeout
    while True:
        out = sh("sacct", "-X", "--noheader", "--parsable2", "--format=State", f"--jobs={job_id}", check=False)
        state = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        if state and state.split()[0] not in ("PENDING", "RUNNING", "REQUEUED"):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"sacct never recorded the end of {job_id}: {out.stdout!r} {out.stderr!r}")
        await asyncio.sleep(0.5)


def records(job_dir: Path) -> list[dict[str, Any]]:
    path = job_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def nodbd_cluster(slurm_cluster: Cluster):
    """A second cluster on other ports, without slurmdbd: sacct fails, sacct -c reads the
    job completion log (JobCompType=jobcomp/filetxt). Yields its SLURM_CONF."""
    run_dir = os.environ.get("SLURM_RUN_DIR", "/run/chl-slurm") + "-nodbd"
    env = {
        **os.environ,
        "SLURM_WITH_DBD": "0",
        "SLURM_STATE_DIR": tempfile.mkdtemp(prefix="chl-slurm-nodbd-"),
        "SLURM_RUN_DIR": run_dir,
        # next to the main cluster's ports, whatever they are
        "SLURMCTLD_PORT": str(int(os.environ.get("SLURMCTLD_PORT", "6817")) + 1000),
        "SLURMD_PORT": str(int(os.environ.get("SLURMD_PORT", "6818")) + 1000),
        "SLURM_MIN_JOB_AGE": "2",
        # its slurmd would share the main one's cgroup tree (slurm/uid_N/job_N): job ids collide
        "SLURM_CGROUP": "no",
    }
    env.pop("SLURM_CONF", None)
    res = sh(str(SCRIPT), "start", check=False, env=env)
    if res.returncode != 0:
        _unavailable(f"the cluster without slurmdbd did not start: {res.stderr[-2000:]}")
    yield f"{run_dir}/slurm.conf"
    sh(str(SCRIPT), "stop", check=False, env=env)
    shutil.rmtree(env["SLURM_STATE_DIR"], ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def work(tmp_path: Path, slurm_cluster: Cluster) -> Path:
    return tmp_path


@pytest.fixture
def backend(work: Path) -> SlurmBackend:
    return make_backend(work)


@pytest.fixture(scope="session")
def shared_base() -> Path:
    """A directory every test user can reach (pytest's tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="chl-slurm-users-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
