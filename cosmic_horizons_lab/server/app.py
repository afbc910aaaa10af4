"""The jupyter-server extension app: configuration (traitlets) and wiring, nothing else.

Everything an operator sets lives here, in the config section
``CosmicHorizons`` (``c.CosmicHorizons.backend = "slurm"`` in
``jupyter_server_config.py``, or ``--CosmicHorizons.backend=slurm``); the
backends have their own sections (``c.LocalBackend``, ``c.SlurmBackend``).
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
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
from opentelemetry import trace
from traitlets import Bool, Dict, Float, Int, Unicode, default

from cosmic_horizons_lab._version import __version__
from cosmic_horizons_lab.backends.base import Backend
from cosmic_horizons_lab.server.accounting.costs import Accounting, CostModel, budgets_from_settings
from cosmic_horizons_lab.server.datasets import DatasetRegistry
from cosmic_horizons_lab.server.events import EventBus
from cosmic_horizons_lab.server.heap import freeze_startup_heap
from cosmic_horizons_lab.server.handlers import routes
from cosmic_horizons_lab.protocol.jobdir import OutputIndex
from cosmic_horizons_lab.server.advisor import Advisor
from cosmic_horizons_lab.server.inspection import DatasetInspector
from cosmic_horizons_lab.server.jobs.orchestrator import Orchestrator
from cosmic_horizons_lab.server.prometheus import Instruments
from cosmic_horizons_lab.server.sky import Sky
from cosmic_horizons_lab.server.staging.service import DEFAULT_THROUGHPUT, StagingService
from cosmic_horizons_lab.server.staging.targets import targets_from_settings
from cosmic_horizons_lab.server.store.database import Store, sqlite_url
from cosmic_horizons_lab.server.api.submission import SubmissionValidator
from cosmic_horizons_lab.server.telemetry import GpuTelemetry, probe_gpus
from cosmic_horizons_lab.server.jobs.samples import JobSamples
from cosmic_horizons_lab.server.accounting.usage import Usage
from cosmic_horizons_lab.server.webhooks import Webhooks
from cosmic_horizons_lab.server.observability import ObservabilitySettings
from cosmic_horizons_lab.server.tracing import Tracing, install_log_correlation, untraced_context
from cosmic_horizons_lab.server.alerts import Alerts, rules_from_settings
from cosmic_horizons_lab.server.analytics.service import UsageAnalytics
from cosmic_horizons_lab.protocol.api import API_PREFIX
from cosmic_horizons_lab.backends.local import LocalBackend
from cosmic_horizons_lab.backends.slurm import SlurmBackend


BACKENDS = {
    "local": "cosmic_horizons_lab.backends.local:LocalBackend",
    "slurm": "cosmic_horizons_lab.backends.slurm:SlurmBackend",
}


def _state_dir() -> Path:
    return Path(jupyter_data_dir()) / "cosmic_horizons"


class CosmicHorizons(ObservabilitySettings, ExtensionApp):
    """Run and watch reprocessing jobs from JupyterLab."""

    name = "cosmic_horizons_lab"
    load_other_extensions = True
    # the backends' settings, for the extension's own --help-all (docs/configuration.md lists
    # them all: jupyter-server's --help-all shows only its own classes)
    classes = [*ExtensionApp.classes, LocalBackend, SlurmBackend]

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
    warm_datasets = Bool(
        True,
        help="Read every dataset's shape in the background at start, so the first dataset listing "
             "answers at once instead of waiting for the science worker (seconds). The worker runs "
             "niced; the demo's and the presets' shapes ship with the package and need none.",
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

    job_sample_interval = Float(
        1.0, help="Seconds between the resource samples a job takes of its own GPUs (or, without one, "
        "its CPU and RSS) on the node it runs on, for GET jobs/{id}/resources, the per-node heatmap and "
        "the metrics (clamped to 0.1..60; default 1).",
    ).tag(config=True)

    # -- cost and quotas (costs.py; docs/operators.md) ----------------------------------
    gpu_hourly_rate = Float(
        0.35, help="Price of one GPU-hour in US dollars, for job costs, estimates and metrics (default 0.35).",
    ).tag(config=True)

    su_rates = Dict(
        {"default": 1.0},
        help="TACC Service Units charged per node-hour, by queue (Slurm partition; 'local' for the local "
        "backend); 'default' covers queues not named. E.g. {'gpu-a100': 3, 'default': 1}. "
        "SUs = nodes × max(wall hours, 0.25) × rate.",
    ).tag(config=True)

    gpus_per_node = Int(
        1, help="GPUs per Slurm node, to turn a job's gpu_count into nodes for SU charges "
        "(Lonestar6 gpu-a100: 3). The local backend always counts one node.",
    ).tag(config=True)

    su_budget = Float(
        0.0, help="Each user's SU budget (0 = unlimited). A submission whose reservation (its max_runtime, "
        "or su_reserve_hours) does not fit what is left is refused with HTTP 402.",
    ).tag(config=True)

    su_budgets_file = Unicode(
        "", help="JSON file operators maintain with per-user SU budgets: {\"default\": n, \"users\": "
        "{\"name\": n}} (null = unlimited). Re-read when it changes; overrides su_budget.",
    ).tag(config=True)

    su_reserve_hours = Float(
        1.0, help="Hours of wall time a job without max_runtime reserves against its user's SU budget "
        "until it ends and is charged what it used.",
    ).tag(config=True)

    # -- staging (staging.py) -----------------------------------------------------------------
    staging_targets = Dict(
        {}, help="Named staging targets: {name: path} or {name: {'path': ..., 'purge_days': n}}. "
        "'tacc_scratch' always exists (default <work_dir>/staging/tacc_scratch); "
        "$VARS and ~ are expanded, e.g. {'tacc_scratch': '$SCRATCH/cosmic-horizons'}.",
    ).tag(config=True)

    staging_purge_days = Float(
        10.0, help="Age in days after which a staged copy is considered purged (TACC purges $SCRATCH files "
        "untouched for 10 days): it is reported stale and staged again when a job uses it.",
    ).tag(config=True)

    staging_concurrency = Int(2, help="Transfers that run at once; the rest wait, high priority first.").tag(config=True)

    staging_chunk_bytes = Int(8 * 1024 * 1024, help="Bytes per read/write while staging (min 64 KiB).").tag(config=True)

    staging_verify = Bool(
        True, help="Read every staged copy back and compare its SHA-256 with the archive's before it "
        "takes its final name. Turn off only to measure what verification costs.",
    ).tag(config=True)

    staging_max_bytes_per_second = Float(
        0.0, help="Cap on each transfer's rate in bytes/s (0 = none), to be polite to a shared filesystem.",
    ).tag(config=True)

    staging_progress_interval = Float(
        0.5, help="Seconds between staging.progress events of one transfer.",
    ).tag(config=True)

    staging_default_throughput = Float(
        DEFAULT_THROUGHPUT, help="Bytes/s assumed by transfer estimates for a target no transfer has "
        "measured yet (default 100 MB/s); measured throughput replaces it after the first transfer.",
    ).tag(config=True)

    # -- webhooks (webhooks.py) -----------------------------------------------------------------
    webhook_all_transitions = Bool(
        False, help="POST a job's webhook on every status change, not only when it ends.",
    ).tag(config=True)

    webhook_max_attempts = Int(10, help="Attempts per webhook delivery before it is marked failed.").tag(config=True)

    webhook_backoff_seconds = Float(
        2.0, help="First retry delay of a failed webhook delivery; doubles each attempt (capped at 10 min).",
    ).tag(config=True)

    webhook_timeout = Float(10.0, help="Seconds a webhook receiver has to answer one POST.").tag(config=True)
    sky_survey = Unicode(
        "", help="A HiPS survey shown behind the sky map (a URL, e.g. a local HiPS served to the browser, or a CDS "
        "id such as 'P/DSS2/color'). Empty (the default): a blank background and no request leaves the page."
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
        install_log_correlation()
        self.tracing = Tracing(otlp_endpoint=self.otlp_endpoint, otlp_headers=self.otlp_headers,
                               sampling_ratio=self.trace_sampling_ratio)
        self.outputs = OutputIndex()
        self.datasets = DatasetRegistry(self.datasets_path, self.work_path / ".simulated")
        self.datasets_path.mkdir(parents=True, exist_ok=True)
        self.work_path.mkdir(parents=True, exist_ok=True)
        url = self.db_url or sqlite_url(_state_dir() / "jobs.db")
        self.store = Store(url, publish=self._publish)
        self.gpus, why = probe_gpus()
        self.execution_backend = self._make_backend()
        max_gpus = self.execution_backend.max_gpus() if hasattr(self.execution_backend, "max_gpus") else None
        # A local backend knows its GPUs; a cluster's are the scheduler's business (assumed there).
        gpus_present = bool(getattr(self.execution_backend, "gpus", True))
        self.validator = SubmissionValidator(self.datasets, self.root_path, max_gpus, self.execution_backend.name,
                                             gpus_present)
        self.telemetry = GpuTelemetry(self.gpu_sample_interval, store=self.store)
        self.instruments = Instruments(lambda: self.telemetry.gpus)
        slurm = self.execution_backend.name != "local"
        queue = (getattr(self.execution_backend, "partition", "") or self.execution_backend.name) if slurm else "local"
        self.costs = CostModel(
            gpu_hourly_rate=self.gpu_hourly_rate, su_rates=self.su_rates, queue=queue,
            gpus_per_node=self.gpus_per_node, single_node=not slurm, reserve_hours=self.su_reserve_hours,
        )
        self.accounting = Accounting(self.store, self.costs, budgets_from_settings(self.su_budget, self.su_budgets_file))
        self.staging = StagingService(
            store=self.store, datasets=self.datasets,
            targets=targets_from_settings(self.staging_targets, self.work_path / "staging", self.staging_purge_days),
            server_id=self.server_id, concurrency=self.staging_concurrency, chunk_bytes=self.staging_chunk_bytes,
            verify=self.staging_verify, max_bytes_per_second=self.staging_max_bytes_per_second,
            progress_interval=self.staging_progress_interval, default_throughput=self.staging_default_throughput,
            on_bytes=self.instruments.staging_bytes, tracing=self.tracing,
        )
        self.webhooks = Webhooks(
            store=self.store, server_id=self.server_id, api_url=lambda: self.api_url,
            all_transitions=self.webhook_all_transitions, max_attempts=self.webhook_max_attempts,
            backoff_base=self.webhook_backoff_seconds, timeout=self.webhook_timeout,
            on_attempt=self.instruments.webhook_attempt, tracing=self.tracing,
        )
        self.orchestrator = Orchestrator(
            store=self.store,
            backend=self.execution_backend,
            validator=self.validator,
            datasets=self.datasets,
            work_dir=self.work_path,
            server_root=self.root_path,
            server_id=self.server_id,
            poll_interval=self.poll_interval,
            submit_checks=[self.accounting.check],
            # charge first, so the webhook's body carries the cost
            transition_hooks=[self.accounting.on_transition, self.webhooks.on_transition],
            resolve_dataset=self.staging.resolve,
            tracing=self.tracing,
            sample_interval=min(max(self.job_sample_interval, 0.1), 60.0),
        )
        self.inspector = DatasetInspector(self.store, self.datasets)
        self.sky = Sky(self.store, self.datasets, self.work_path, self.orchestrator.get_job)
        # an ended job's footprint is read after its commit, in the background (server/sky/coverage.py)
        self.orchestrator.lifecycle.hooks.append(self.sky.coverage.on_transition)
        self.job_samples = JobSamples(self.store, self.work_path)
        self.usage = Usage(self.store, self.costs, self.work_path, samples=self.job_samples)
        self.analytics = UsageAnalytics(
            self.store, Path(self.analytics_dir).expanduser() if self.analytics_dir else
            _state_dir() / "analytics" / hashlib.sha256(url.encode()).hexdigest()[:12],
            freshness=self.analytics_freshness, leaderboard_public=self.leaderboard_public,
        )
        self.alerts = Alerts(
            store=self.store, server_id=self.server_id, budgets=self.accounting.budgets,
            rules=rules_from_settings(self.alert_rules), webhook_url=self.alert_webhook_url,
            interval=self.alert_interval,
        )
        self.advisor = Advisor(
            store=self.store, validator=self.validator, datasets=self.datasets, inspector=self.inspector,
            costs=self.costs, accounting=self.accounting, usage=self.usage,
        )
        self.event_bridge = self._make_event_bridge()
        self.log.info(
            "cosmic-horizons-lab %s: backend=%s, store=%s, work_dir=%s, GPUs=%s",
            __version__, self.execution_backend.name, _redact(url), self.work_path, len(self.gpus) or f"none ({why})",
        )

    def _make_backend(self) -> Backend:
        ref = BACKENDS.get(self.backend, self.backend)
        module, _, attr = ref.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        kwargs: dict[str, Any] = {"parent": self, "work_dir": self.work_path, "python": sys.executable}
        if self.backend == "slurm" and "min_poll_interval" not in self.config.get("SlurmBackend", {}):
            # One squeue per tick at most, and never a tick answered from the previous one's snapshot.
            kwargs["min_poll_interval"] = 0.9 * self.poll_interval
        if self.backend == "local":
            slots = self.local_slots or len(self.gpus) or os.cpu_count() or 1
            kwargs.update(slots=slots, gpus=self.gpus[:slots], on_exit=lambda: self.orchestrator.wake(reconcile=True))
        return cls(**kwargs)

    def _make_event_bridge(self) -> Any:
        """The NATS bridge, or None when ``event_bus_url`` is empty (nats-py is imported only then)."""
        if not self.event_bus_url:
            return None
        try:
            from cosmic_horizons_lab.server.bridge.nats import NatsBridge
        except ImportError as exc:
            raise RuntimeError("event_bus_url is set but nats-py is missing: pip install "
                               "'cosmic-horizons-lab[bus]'") from exc
        return NatsBridge(
            self.store, url=self.event_bus_url, stream=self.event_bus_stream, batch_size=self.event_bus_batch_size,
            retry_max=self.event_bus_retry_max_seconds, poll_interval=self.event_bus_poll_interval,
            duplicate_window=self.event_bus_duplicate_window, msg_id_prefix=self.event_bus_msg_id_prefix,
        )

    def _publish(self, events: list[dict[str, Any]]) -> None:
        self.bus.publish(events)
        if self.event_bridge is not None:
            self.event_bridge.wake()
        self.orchestrator.on_published(events)
        self.instruments.on_published(events)
        self.alerts.on_published(events)

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
        if self.ready.is_set():
            return
        if trace.get_current_span().get_span_context().is_valid:
            # started by a request: the loops started here must not run inside its span
            return await asyncio.get_running_loop().create_task(self.ensure_started(), context=untraced_context())
        async with self._start_lock:
            if self.ready.is_set():
                return
            await self.store.open()
            await self.execution_backend.start()
            await self.orchestrator.start()
            await self.telemetry.start()
            self.instruments.set_job_counts(await self.usage.status_counts(self.server_id))
            web_app = getattr(self.serverapp, "web_app", None)  # exists by now, not at initialize_settings
            if web_app is not None and web_app.settings.get("log_function"):
                web_app.settings["log_function"] = self.instruments.wrap_log_function(web_app.settings["log_function"])
            await self.staging.start()
            await self.webhooks.start()
            await self.alerts.start()
            await self.analytics.start()
            if self.event_bridge is not None:
                await self.event_bridge.start()
            if self.warm_datasets:
                self._warming = asyncio.get_running_loop().run_in_executor(None, self._warm_datasets)
            # start-up's objects out of the full collections' sight (server/heap.py)
            freeze_startup_heap()
            self.ready.set()

    def _warm_datasets(self) -> None:
        try:
            self.datasets.warm()
        except Exception:  # a listing will read what it needs then; nothing is lost
            self.log.warning("warming the dataset listing failed", exc_info=True)

    async def stop_extension(self) -> None:
        if not self.ready.is_set():
            return
        await self.orchestrator.stop()
        await self.staging.stop()
        await self.webhooks.stop()
        await self.alerts.stop()
        await self.analytics.stop()
        if self.event_bridge is not None:
            await self.event_bridge.stop()
        await self.sky.coverage.stop()
        await self.telemetry.stop()
        await self.execution_backend.stop()
        await self.store.close()
        await asyncio.to_thread(self.tracing.shutdown)  # flushes the exporter's last spans

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
            **({"event_bus": await self.event_bridge.status()} if self.event_bridge is not None else {}),
            "last_tick_age_seconds": (
                round(time.time() - self.orchestrator.last_tick, 3) if self.orchestrator.last_tick else None
            ),
        }


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
