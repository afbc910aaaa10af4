"""Two Unix users, as on a shared hub where each single-user server submits as its own user.

Each backend runs the Slurm commands as its user (``runuser -u <user> --``, the way a
wrapper would), so Slurm itself decides who may do what.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cosmic_horizons_lab.backends.slurm import SlurmPermissionError

from .conftest import USERS, make_backend, make_job, wait_until

pytestmark = pytest.mark.timeout(120)


def as_user(user: str, work: Path, **config):
    prefix = f"runuser -u {user} --"
    for cmd in ("sbatch", "squeue", "sacct", "scancel", "sinfo"):
        config.setdefault(f"{cmd}_command", f"{prefix} {cmd}")
    return make_backend(work, **config)


def user_dir(base: Path, user: str) -> Path:
    path = base / user
    path.mkdir(exist_ok=True)
    shutil.chown(path, user, user)
    path.chmod(0o755)
    return path


def own(path: Path, user: str) -> None:
    for p in [path, *path.rglob("*")]:
        shutil.chown(p, user, user)


def can_run_python(user: str, python: str, env: dict[str, str] | None = None) -> bool:
    """Whether the user can start this interpreter and import the executor."""
    res = subprocess.run(
        ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in (env or {}).items()],
         python, "-c", "import cosmic_horizons_lab.executor"],
        capture_output=True, cwd="/",
    )  # fmt: skip
    return res.returncode == 0


def python_for(user: str, shared: Path) -> tuple[str, dict[str, str]]:
    """An interpreter the user can run the executor with, and the environment it needs.

    The server's own (the venv) when the checkout is reachable by the user (as on a
    hub); else the system Python with a copy of the package in a shared directory (the
    checkout may lie under root's private home). The executor needs only the stdlib.
    """
    if can_run_python(user, sys.executable):
        return sys.executable, {}
    pkg = shared / "pkg"
    if not pkg.exists():
        src = Path(__file__).resolve().parents[2] / "cosmic_horizons_lab"
        shutil.copytree(src, pkg / "cosmic_horizons_lab",
                        ignore=shutil.ignore_patterns("labextension", "static", "__pycache__"))  # fmt: skip
        for p in [pkg, *pkg.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    system = shutil.which("python3", path="/usr/bin:/usr/local/bin") or "/usr/bin/python3"
    env = {"PYTHONPATH": str(pkg)}
    assert can_run_python(user, system, env), "no Python the test user can run the executor with"
    return system, env


async def test_jobs_run_as_their_user_and_others_cannot_cancel(slurm_cluster, shared_base):
    alice, bob = USERS
    a_dir, b_dir = user_dir(shared_base, alice), user_dir(shared_base, bob)
    python, env = python_for(alice, shared_base)
    a_backend, b_backend = as_user(alice, a_dir), as_user(bob, b_dir)
    a_backend.python = python

    # A job alice submits runs as alice.
    spec = make_job(a_dir, "whoami", "import getpass, os\nprint('USER=' + getpass.getuser())\n"
                    "open('outputs/owner.txt', 'w').write(str(os.getuid()))\n")  # fmt: skip
    spec.env.update(env)
    own(spec.job_dir, alice)
    bid = await a_backend.submit(spec)
    st = (await wait_until(a_backend, [bid], timeout=60))[bid]
    assert st.detail.get("user") == alice
    log = spec.job_dir / "stdout.log"
    assert st.status == "COMPLETED", (st, log.read_text())
    assert f"USER={alice}" in log.read_text()
    assert log.stat().st_uid == _uid(alice)  # slurmstepd opened the log as alice
    assert (spec.job_dir / "outputs" / "owner.txt").read_text() == str(_uid(alice))

    # Bob cannot cancel alice's job: Slurm refuses, and the backend says so.
    held = make_job(a_dir, "held", "print('never')\n")
    own(held.job_dir, alice)
    a_held_backend = as_user(alice, a_dir, extra_directives=["--hold"])
    hid = await a_held_backend.submit(held)
    with pytest.raises(SlurmPermissionError) as err:
        await b_backend.cancel(hid)
    assert "permission denied" in str(err.value).lower()
    # ...and the job is untouched
    st = (await a_backend.poll([hid]))[hid]
    assert st.status == "QUEUING" and st.detail.get("user") == alice
    # Root (an administrator) is not the point here; alice herself can cancel it.
    await a_backend.cancel(hid)
    st = (await wait_until(a_backend, [hid], timeout=30))[hid]
    assert st.status == "CANCELLED"
    assert st.detail.get("cancelled_by") == alice


async def test_bob_cannot_cancel_alices_array_element(slurm_cluster, shared_base):
    alice, bob = USERS
    a_dir = user_dir(shared_base, alice)
    specs = [make_job(a_dir, f"arr{i}", "pass\n") for i in range(2)]
    for s in specs:
        own(s.job_dir, alice)
    own(a_dir, alice)
    a_backend = as_user(alice, a_dir, extra_directives=["--hold"])
    ids = await a_backend.submit_array(specs, parallel_limit=1)
    b_backend = as_user(bob, user_dir(shared_base, bob))
    with pytest.raises(SlurmPermissionError):
        await b_backend.cancel(ids[1])
    for bid in ids:
        await a_backend.cancel(bid)
    states = await wait_until(a_backend, ids, timeout=30)
    assert all(s.status == "CANCELLED" for s in states.values())


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_users_exist(slurm_cluster):
    for user in USERS:
        assert subprocess.run(["id", user], capture_output=True).returncode == 0
    assert os.geteuid() == 0
