"""The jupyter-server extension app: configuration (traitlets) and wiring, nothing else.

Everything an operator sets lives here, in the config section
``CosmicHorizons`` (``c.CosmicHorizons.backend = "slurm"`` in
``jupyter_server_config.py``, or ``--CosmicHorizons.backend=slurm``); the
backends have their own sections (``c.LocalBackend``, ``c.SlurmBackend``).
"""

from __future__ import annotations

import asyncio
import getpass
import importlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Float, Int, Unicode, default

from . import __version__
from .backends.base import Backend
from .datasets import DatasetRegistry
from .events import EventBus
from .handlers import routes
from .jobdir import OutputIndex
from .orchestrator import Orchestrator
from .store import Store, sqlite_url
from .submission import SubmissionValidator
from .telemetry import GpuTelemetry, probe_gpus

API_PREFIX = "cosmic-horizons/api/"

BACKENDS = {
    "local": "cosmic_horizons_lab.backends.local:LocalBackend",
    "slurm": "cosmic_horizons_lab.backends.slurm:SlurmBackend",
}


def _state_dir() -> Path:
    return Path(jupyter_data_dir()) / "cosmic_horizons"


class CosmicHorizons(ExtensionApp):
    """Run and watch reprocessing jobs from JupyterLab."""

    name = "cosmic_horizons_lab"
    load_other_extensions = True

    db_url = Unicode(
        "",
        help="SQLAlchemy URL of the job store. Default: an SQLite file (WAL mode, via aiosqlite) "
        "at <Jupyter data dir>/cosmic_horizons/jobs.db. For a shared hub: "
        "postgresql+asyncpg://user:password@host/dbname.",
    ).tag(config=True)

    backend = Unicode(
        "local",
        help="Where jobs run: 'local' (GPU slots on this machine), 'slurm', or 'package.module:Class' "
        "for a Backend of your own.",
    ).tag(config=True)

    work_dir = Unicode(
        "",
        help="Folder for job directories (<work_dir>/<user>/<job id>/). Default: "
        "'cosmic-horizons-jobs' inside the server's root directory, so outputs show in Lab's file browser. "
        "On Slurm it must be on a filesystem the compute nodes share.",
    ).tag(config=True)

    datasets_dir = Unicode(
        "",
        help="Folder whose files are the datasets (a dataset's id is its file name without extension). "
        "Default: <Jupyter data dir>/cosmic_horizons/datasets.",
    ).tag(config=True)

    local_slots = Int(
        0,
        help="Job slots of the local backend. 0 (default): one per GPU that NVML sees, "
        "else one CPU slot per core.",
    ).tag(config=True)

    poll_interval = Float(
        1.0,
        help="Seconds between polls of the backend and of the job directories for progress. "
        "Submissions and job exits wake the loop at once, so this bounds the delay of progress only.",
    ).tag(config=True)

    owner = Unicode(
        help="The user who owns jobs submitted with the server's token when the identity provider "
        "does not name users (a plain jupyter lab). Default: the Unix user running the server.",
    ).tag(config=True)

    server_id = Unicode(
        help="This server's name in a shared database: it manages only the jobs it submitted. "
        "Default: <hostname>:<work_dir>.",
    ).tag(config=True)

    max_body_bytes = Int(2 * 1024 * 1024, help="Largest request body accepted, in bytes (413 above).").tag(
        config=True
    )

    gpu_sample_interval = Float(
        1.0, help="Seconds between GPU telemetry samples (clamped to 0.25..60); one sampler serves every viewer."
    ).tag(config=True)

    @default("owner")
    def _default_owner(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    @default("server_id")
    def _default_server_id(self) -> str:
        return f"{socket.gethostname()}:{self.work_path}"

    # -- derived paths ---------------------------------------------------------------
    @property
    def root_path(self) -> Path:
        return Path(self.serverapp.root_dir).expanduser().resolve()

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir).expanduser().resolve() if self.work_dir else self.root_path / "cosmic-horizons-jobs"

    @property
    def datasets_path(self) -> Path:
        return Path(self.datasets_dir).expanduser() if self.datasets_dir else _state_dir() / "datasets"

    @property
    def api_url(self) -> str:
        return url_path_join(self.serverapp.base_url, API_PREFIX)

    # -- wiring ------------------------------------------------------------------------
    def initialize_settings(self) -> None:
        self.ready = asyncio.Event()
        self._start_lock = asyncio.Lock()
        self.bus = EventBus()
        self.outputs = OutputIndex()
        self.datasets = DatasetRegistry(self.datasets_path)
        self.datasets_path.mkdir(parents=True, exist_ok=True)
        self.work_path.mkdir(parents=True, exist_ok=True)
        url = self.db_url or sqlite_url(_state_dir() / "jobs.db")
        self.store = Store(url, publish=self._publish)
        self.gpus, why = probe_gpus()
        self.execution_backend = self._make_backend()
        max_gpus = self.execution_backend.max_gpus() if hasattr(self.execution_backend, "max_gpus") else None
        self.validator = SubmissionValidator(self.datasets, self.root_path, max_gpus)
        self.orchestrator = Orchestrator(
            store=self.store,
            backend=self.execution_backend,
            validator=self.validator,
            datasets=self.datasets,
            work_dir=self.work_path,
            server_root=self.root_path,
            server_id=self.server_id,
            poll_interval=self.poll_interval,
        )
        self.telemetry = GpuTelemetry(self.gpu_sample_interval, store=self.store)
        self.log.info(
            "cosmic-horizons-lab %s: backend=%s, store=%s, work_dir=%s, GPUs=%s",
            __version__, self.execution_backend.name, _redact(url), self.work_path, len(self.gpus) or f"none ({why})",
        )

    def _make_backend(self) -> Backend:
        ref = BACKENDS.get(self.backend, self.backend)
        module, _, attr = ref.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        kwargs: dict[str, Any] = {"parent": self, "work_dir": self.work_path, "python": sys.executable}
        if self.backend == "local":
            slots = self.local_slots or len(self.gpus) or os.cpu_count() or 1
            kwargs.update(slots=slots, gpus=self.gpus[:slots], on_exit=lambda: self.orchestrator.wake())
        return cls(**kwargs)

    def _publish(self, events: list[dict[str, Any]]) -> None:
        self.bus.publish(events)
        self.orchestrator.on_published(events)

    def initialize_handlers(self) -> None:
        self.handlers.extend((url_path_join(API_PREFIX, pattern), handler) for pattern, handler in routes())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        await self.ensure_started()

    async def ensure_started(self) -> None:
        """Open the store, re-attach to running jobs, start the loop — once.

        jupyter-server calls this after its loop starts; the first request
        calls it too, so an embedding that never runs the server's start hook
        (a test harness, another launcher) still works.
        """
        async with self._start_lock:
            if self.ready.is_set():
                return
            await self.store.open()
            await self.execution_backend.start()
            await self.orchestrator.start()
            await self.telemetry.start()
            self.ready.set()

    async def stop_extension(self) -> None:
        if not self.ready.is_set():
            return
        await self.orchestrator.stop()
        await self.telemetry.stop()
        await self.execution_backend.stop()
        await self.store.close()

    async def health(self) -> dict[str, Any]:
        backend = await self.execution_backend.health()
        if self.orchestrator.backend_error:
            backend = {**backend, "ok": False, "error": self.orchestrator.backend_error}
        try:
            await self.store.last_event_id()
            store_ok: dict[str, Any] = {"ok": True, "revision": await self.store.revision()}
        except Exception as exc:
            store_ok = {"ok": False, "error": str(exc)}
        return {
            "status": "ok" if backend.get("ok") and store_ok["ok"] else "degraded",
            "version": __version__,
            "backend": {"name": self.execution_backend.name, **backend},
            "store": {"dialect": self.store.engine.dialect.name, **store_ok},
            "gpus": {"available": self.telemetry.available, "count": len(self.telemetry.gpus), "reason": self.telemetry.reason},
            "subscribers": self.bus.subscriber_count(),
            "last_tick_age_seconds": (
                round(time.time() - self.orchestrator.last_tick, 3) if self.orchestrator.last_tick else None
            ),
        }


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
