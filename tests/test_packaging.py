"""The package as users install it: its metadata, its wheel and sdist, a wheel with no extra.

The end-to-end test builds the wheel of the working tree (no npm: the prebuilt JS is in the
tree, ``scripts/setup`` builds it), installs it with ``--no-deps`` into ``.services/core-venv``
(a venv holding only the core dependencies, made by ``scripts/setup --test``: a test never
downloads) and runs ``jupyter server`` from there, enabled by the wheel's own
``etc/jupyter/jupyter_server_config.d`` file, as after ``pip install cosmic-horizons-lab``.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from email.parser import HeaderParser
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest

from cosmic_horizons_lab.executor.agent import EXTRA_MODULES
from cosmic_horizons_lab.executor.registry import agents

from .services import free_port

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cosmic_horizons_lab"
CORE_VENV = ROOT / ".services" / "core-venv"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
HOOK = PYPROJECT["tool"]["hatch"]["build"]["hooks"]["jupyter-builder"]
#: Layers that run in the server process or the job process of a plain (core) install.
CORE_LAYERS = ("server", "backends", "protocol", "executor", "data")
SCIENCE_AGENTS = ("AlphaCal", "ImageReconstruction", "AnomalyDetection")


def _unavailable(why: str) -> None:
    """A missing prerequisite fails the test: ``scripts/setup --test`` must provide it."""
    pytest.fail(f"{why} (scripts/setup --test provides it)", pytrace=False)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def _core() -> set[str]:
    return {_req_name(r) for r in PYPROJECT["project"]["dependencies"]}


def _extra(name: str) -> set[str]:
    return {_req_name(r) for r in PYPROJECT["project"]["optional-dependencies"][name]}


# -- metadata --------------------------------------------------------------------------------
def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party modules the core layers import (agents excepted), with where."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    found: dict[str, set[str]] = {}
    for layer in CORE_LAYERS:
        for path in (PKG / layer).rglob("*.py"):
            if "agents" in path.relative_to(PKG).parts:
                continue  # the science agents: their extra, checked below
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in stdlib and top != "cosmic_horizons_lab":
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


#: Modules of the core layers that run only when an extra is installed and configured, with that
#: extra: the server imports them only then (the bridge when ``event_bus_url`` is set), and the
#: fork server's warm spare runs the warm-up only for agents of the science extra (a spare that
#: cannot import it switches spares off; ``tests/test_fork_server.py``).
EXTRA_ONLY_MODULES = {
    "cosmic_horizons_lab/server/bridge/nats.py": "bus",
    "cosmic_horizons_lab/executor/warmup.py": "science",
}


def test_every_import_of_the_core_layers_is_a_core_dependency():
    dists = packages_distributions()
    core = _core()
    problems = []
    for module, where in sorted(_third_party_imports().items()):
        names = {_norm(d) for d in dists.get(module, [])}
        extras = {EXTRA_ONLY_MODULES.get(w) for w in where}
        if None not in extras:  # imported only by modules of an extra: from that extra
            if not names & core and not any(names & _extra(e) for e in extras):
                problems.append(f"{module} (imported by {sorted(where)[0]}) is not in the {sorted(extras)} extra")
            continue
        if not names:
            problems.append(f"{module} (imported by {sorted(where)[0]}) is not installed here")
        elif not names & core:
            problems.append(f"{module} (imported by {sorted(where)[0]}) comes from {sorted(names)}, "
                            "which is not a core dependency in pyproject.toml")
    assert not problems, "\n".join(problems)


def test_extras():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"science", "notebook", "lab", "postgres", "bus", "otlp", "all", "test"} <= set(extras)
    assert "asyncpg" not in _core() and _extra("postgres") == {"asyncpg"}
    assert {"torch", "numpy", "scipy", "astropy", "pyuvdata", "python-casacore"} <= _extra("science")
    assert {"anywidget", "ipywidgets", "ipykernel", "numpy", "matplotlib", "astropy", "websockets"} <= _extra("notebook")
    assert _extra("lab") == {"jupyterlab"}
    (everything,) = extras["all"]
    assert re.fullmatch(r"cosmic-horizons-lab\[(.*)\]", everything).group(1).split(",") == sorted(
        ["lab", "notebook", "postgres", "science", "bus", "otlp"]
    )
    assert _extra("bus") == {"nats-py"} and _extra("otlp") == {"opentelemetry-exporter-otlp-proto-http"}
    assert "numpy" not in _core() and "torch" not in _core()


def test_each_agent_names_the_extra_it_needs():
    found = agents()
    assert found["Script"].extra is None and found["Script"].missing_extra() is None
    for name in SCIENCE_AGENTS:
        assert found[name].extra == "science", name
    dists = packages_distributions()
    for extra, modules in EXTRA_MODULES.items():
        assert extra in PYPROJECT["project"]["optional-dependencies"], extra
        for module in modules:  # each module the check looks for is installed by that extra
            assert {_norm(d) for d in dists.get(module, [])} & _extra(extra), (extra, module)


def test_a_missing_extra_is_a_422_naming_it(monkeypatch, tmp_path):
    from cosmic_horizons_lab.executor import agent as agent_module
    from cosmic_horizons_lab.server.api.submission import SubmissionValidator
    from cosmic_horizons_lab.server.errors import ValidationFailed

    assert agents()["AlphaCal"].missing_extra() is None  # this venv has the science extra
    imported = set(sys.modules)
    monkeypatch.setitem(agent_module.EXTRA_MODULES, "science", (*EXTRA_MODULES["science"], "chl_no_such_module"))
    validator = SubmissionValidator(datasets=None, server_root=tmp_path, max_gpus=None)
    for name in SCIENCE_AGENTS:
        with pytest.raises(ValidationFailed) as err:
            validator.validate({"agent": name, "dataset_id": "x", "params": {}})
        assert err.value.status == 422 and err.value.field == "agent"
        assert err.value.message == (
            f"{name} needs the 'science' extra: pip install 'cosmic-horizons-lab[science]'"
        )
    with pytest.raises(ValidationFailed) as err:  # nested (a pipeline stage): the field is dotted
        validator.validate({"agent": "AlphaCal", "params": {}}, prefix="stages.0.")
    assert err.value.field == "stages.0.agent"
    assert not {m for m in set(sys.modules) - imported if m.split(".")[0] in ("torch", "pyuvdata")}


# -- builds ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prebuilt():
    missing = [t for t in HOOK["ensured-targets"] if not (ROOT / t).exists()]
    if missing:
        _unavailable(f"the JS is not built ({missing[0]} is missing): run scripts/setup")
    assert HOOK["skip-if-exists"], "a wheel built where the JS is built must not need npm"
    assert set(HOOK["skip-if-exists"]) <= set(HOOK["ensured-targets"])


def _build_env(tmp: Path) -> dict[str, str]:
    # No npm, ever: the prebuilt JS is used (skip-if-exists) or the build fails.
    return dict(os.environ, HATCH_JUPYTER_BUILDER_SKIP_NPM="1", PIP_NO_INDEX="1",
                PIP_DISABLE_PIP_VERSION_CHECK="1", TMPDIR=str(tmp))


@pytest.fixture(scope="module")
def wheel(prebuilt, tmp_path_factory) -> Path:
    """The wheel of the working tree, built as ``pip wheel`` builds it (no download)."""
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, env=_build_env(out), timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("cosmic_horizons_lab-*.whl")
    return built


def test_the_wheel_carries_the_js_and_the_server_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = next(n.split("/")[0] for n in names if ".data/" in n)
    for target in HOOK["ensured-targets"]:
        assert target in names, target
    assert f"{data}/data/etc/jupyter/jupyter_server_config.d/cosmic_horizons_lab.json" in names
    labext = f"{data}/data/share/jupyter/labextensions/cosmic-horizons-lab"
    assert {f"{labext}/package.json", f"{labext}/install.json", f"{labext}/static/style.js"} <= names
    assert not any(n.startswith(("js/", "tests/", "node_modules/")) or "__pycache__" in n for n in names)

    meta = zipfile.ZipFile(wheel).read(f"{data.removesuffix('.data')}.dist-info/METADATA").decode()
    headers = HeaderParser().parsestr(meta)
    assert set(headers.get_all("Provides-Extra")) >= {"science", "notebook", "lab", "postgres", "all", "test"}
    core = {_req_name(r) for r in headers.get_all("Requires-Dist") if "extra ==" not in r}
    assert core == _core() and "prometheus-client" in core and "asyncpg" not in core


def test_a_wheel_built_from_the_sdist_needs_no_npm(prebuilt, tmp_path):
    """The sdist carries the built JS (the sdist's artifacts), so its wheel builds without Node."""
    env = _build_env(tmp_path)
    code = f"import os; from hatchling.build import build_sdist; os.chdir({str(ROOT)!r}); print(build_sdist({str(tmp_path)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sdist = tmp_path / proc.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
        for target in HOOK["ensured-targets"]:
            assert target in members, f"the sdist lacks {target}"
        assert not any(m.startswith((".venv/", ".services/", "js/node_modules/")) for m in members)
        tar.extractall(tmp_path / "src", filter="data")
    (src,) = (tmp_path / "src").iterdir()
    # No npm on PATH and the npm step not skipped by request: the hook must skip it on its own.
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    code = f"from hatchling.build import build_wheel; print(build_wheel({str(tmp_path / 'dist')!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = tmp_path / "dist" / proc.stdout.strip().splitlines()[-1]
    assert "cosmic_horizons_lab/labextension/static/style.js" in zipfile.ZipFile(built).namelist()


# -- a wheel with no extra, as a user runs it -------------------------------------------------
def _http(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


@pytest.fixture(scope="module")
def core_venv(wheel, tmp_path_factory):
    """``.services/core-venv`` with this wheel installed (the venv locked while a test uses it)."""
    python = CORE_VENV / "bin" / "python"
    if not python.exists():
        _unavailable(f"{CORE_VENV.relative_to(ROOT)} is missing: run scripts/setup --test")
    with open(CORE_VENV / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = dict(_build_env(tmp_path_factory.mktemp("pip")), PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", "--no-index", str(wheel)],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, env=env)
        assert check.returncode == 0, (
            f"{check.stdout}{check.stderr}\nthe core venv does not hold the core dependencies of "
            "pyproject.toml: run scripts/setup --test"
        )
        yield CORE_VENV


def test_a_wheel_without_extras_serves_runs_scripts_and_names_the_missing_extra(core_venv, tmp_path):
    python = core_venv / "bin" / "python"
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    env = {
        "PATH": f"{core_venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(state / "home"),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
        "PYTHONNOUSERSITE": "1",
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_DATA_DIR": str(state / "data"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }

    # What the venv holds: the package from the wheel, none of the extras' libraries.
    code = ("import importlib.util as u, cosmic_horizons_lab as p; print(p.__file__); "
            "print([m for m in ('numpy', 'torch', 'scipy', 'astropy', 'pyuvdata', 'asyncpg', 'jupyterlab') "
            "if u.find_spec(m)])")
    out = subprocess.run([str(python), "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    location, extras = out.stdout.splitlines()
    assert Path(location).resolve().is_relative_to(core_venv.resolve()), location
    assert extras == "[]", f"the core venv holds extras' libraries: {extras}"

    (root / "hello.py").write_text(
        "from cosmic_horizons_lab.executor import report\n"
        "report(progress=0.5)\n"
        "print('hello from a core install')\n"
        "result = {'answer': 42}\n"
    )
    port, token = free_port(), secrets.token_hex(16)
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        [str(core_venv / "bin" / "jupyter"), "server", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
         f"--IdentityProvider.token={token}"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/cosmic-horizons/api/"

    def server_log() -> str:
        return (tmp_path / "server.log").read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"the server exited:\n{server_log()}"
            try:
                code, health = _http("GET", api + "health", token)
                if code != 404:  # 404 while the extension's handlers are not there yet
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"no answer from the server:\n{server_log()}"
            time.sleep(0.3)
        assert code == 200, (health, server_log())
        assert health["backend"]["name"] == "local" and health["store"]["dialect"] == "sqlite", health

        code, job = _http("POST", api + "jobs/submit", token, {"agent": "Script", "params": {"path": "hello.py"}})
        assert code == 201, (job, server_log())
        deadline = time.monotonic() + 60
        while job["status"] not in ("COMPLETED", "FAILED", "CANCELLED"):
            assert time.monotonic() < deadline, (job, server_log())
            time.sleep(0.3)
            code, job = _http("GET", api + f"jobs/{job['id']}", token)
            assert code == 200, job
        assert job["status"] == "COMPLETED", (job, server_log())
        assert job["result"] == {"script": "hello.py", "result": {"answer": 42}}
        code, logs = _http("GET", api + f"jobs/{job['id']}/logs", token)
        assert code == 200 and "hello from a core install" in logs["data"]

        for agent in SCIENCE_AGENTS:
            code, body = _http("POST", api + "jobs/submit", token,
                               {"agent": agent, "dataset_id": "VLASS2.1.eb123456", "params": {}})
            assert code == 422, body
            assert body == {
                "error": "validation_error",
                "message": f"{agent} needs the 'science' extra: pip install 'cosmic-horizons-lab[science]'",
                "field": "agent",
            }

        code, listing = _http("GET", api + "agents", token)  # the specs still load without the science
        assert code == 200, listing
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
        log.close()


# -- the configuration reference -------------------------------------------------------------
def _config_reference() -> Any:
    """scripts/config-reference as a module (it has no .py suffix)."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("config_reference", str(ROOT / "scripts" / "config-reference"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def test_the_configuration_reference_is_up_to_date():
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert _config_reference().render() == committed, (
        "docs/configuration.md differs from the code's settings: run scripts/config-reference and commit it"
    )


def test_the_configuration_reference_names_every_setting():
    from cosmic_horizons_lab.backends.local import LocalBackend
    from cosmic_horizons_lab.backends.slurm import SlurmBackend
    from cosmic_horizons_lab.server.app import CosmicHorizons

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for cls in (CosmicHorizons, LocalBackend, SlurmBackend):
        for name, trait in cls.class_traits(config=True).items():
            if trait.this_class.__module__.startswith("cosmic_horizons_lab"):
                assert f"### `c.{cls.__name__}.{name}`" in text, f"{cls.__name__}.{name}"
