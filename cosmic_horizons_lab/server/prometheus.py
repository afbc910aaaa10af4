"""Prometheus metrics, on prometheus_client's default registry — the one jupyter-server's own
``/metrics`` endpoint serves, so operators scrape one URL per server and need no extra port.

Metric objects are module-level (a registry refuses a name twice); the
extension feeds them from what it already has: committed events (lifecycle
counters, queue depth, running jobs, delivery lag), the request log
(submission latency), staging byte counts, webhook attempts, and the
telemetry sampler's latest reading (GPU gauges, read at scrape time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cosmic_horizons_lab.protocol.states import LIVE, SUBMITTED_EVENT, Status

JOB_EVENTS = Counter(
    "cosmic_horizons_job_transitions", "Job lifecycle events committed by this server, by type "
    "(job.submitted, job.running, job.completed, job.failed, job.cancelled…)", ["type"],
)
JOBS = Gauge("cosmic_horizons_jobs", "Jobs of this server by status (QUEUED = queue depth)", ["status"])
SUBMIT_LATENCY = Histogram(
    "cosmic_horizons_submission_latency_seconds", "Time to answer a submission request (validation, "
    "budget check and the group commit included)", ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVENT_LAG = Histogram(
    "cosmic_horizons_event_delivery_lag_seconds", "From an event's timestamp to its publication to live "
    "subscribers (after the commit)", buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
STAGING_BYTES = Counter("cosmic_horizons_staging_bytes", "Bytes copied by dataset staging, by target", ["target"])
STAGING_TRANSFERS = Counter(
    "cosmic_horizons_staging_transfers", "Staging transfers that ended, by outcome", ["outcome"]
)
WEBHOOK_ATTEMPTS = Counter("cosmic_horizons_webhook_attempts", "Webhook POST attempts, by outcome", ["outcome"])
WEBHOOK_SECONDS = Histogram("cosmic_horizons_webhook_attempt_seconds", "Duration of webhook POST attempts")

SUBMIT_HANDLERS = {"SubmitHandler": "jobs/submit", "SubmitBatchHandler": "jobs/submit-batch",
                   "PipelineHandler": "pipelines"}


class GpuCollector(Collector):
    """GPU utilisation and memory from the telemetry sampler's last reading, at scrape time."""

    def __init__(self) -> None:
        self.source: Callable[[], list[dict[str, Any]]] | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        util = GaugeMetricFamily("cosmic_horizons_gpu_utilization_percent", "GPU utilisation (NVML)", labels=["gpu", "name"])
        mem = GaugeMetricFamily("cosmic_horizons_gpu_memory_used_mb", "GPU memory used (NVML)", labels=["gpu", "name"])
        for g in (self.source() if self.source else []):
            labels = [str(g["index"]), str(g.get("name", ""))]
            util.add_metric(labels, float(g.get("utilization", 0.0)))
            mem.add_metric(labels, float(g.get("memory_used_mb", 0.0)))
        yield util
        yield mem


GPUS = GpuCollector()
REGISTRY.register(GPUS)


class Instruments:
    """The extension's hand on the metrics: one per server app (tests start several in one process)."""

    def __init__(self, gpus: Callable[[], list[dict[str, Any]]]) -> None:
        GPUS.source = gpus

    def set_job_counts(self, counts: dict[str, int]) -> None:
        """Start from the store's truth (at start-up); events move the gauges from there."""
        for status in LIVE:
            JOBS.labels(status).set(counts.get(status, 0))

    def on_published(self, events: list[dict[str, Any]]) -> None:
        now = time.time()
        for ev in events:
            kind = ev["type"]
            try:
                EVENT_LAG.observe(max(0.0, now - datetime.fromisoformat(ev["ts"]).timestamp()))
            except (KeyError, TypeError, ValueError):
                pass
            if kind in ("staging.completed", "staging.failed", "staging.cancelled"):
                STAGING_TRANSFERS.labels(kind.split(".", 1)[1]).inc()
            if not kind.startswith("job.") or kind == "job.progress":
                continue
            JOB_EVENTS.labels(kind).inc()
            payload = ev.get("payload") or {}
            status, previous = payload.get("status"), payload.get("previous")
            if kind == SUBMITTED_EVENT:
                JOBS.labels(Status.QUEUED).inc()
                continue
            if previous in LIVE:
                JOBS.labels(previous).dec()
            if status in LIVE:
                JOBS.labels(status).inc()

    @staticmethod
    def staging_bytes(target: str, n: int) -> None:
        STAGING_BYTES.labels(target).inc(n)

    @staticmethod
    def webhook_attempt(ok: bool, seconds: float) -> None:
        WEBHOOK_ATTEMPTS.labels("delivered" if ok else "failed").inc()
        WEBHOOK_SECONDS.observe(seconds)

    @staticmethod
    def wrap_log_function(original: Callable[[Any], None]) -> Callable[[Any], None]:
        """jupyter-server's request log, plus the submission-latency histogram for our submit handlers."""

        def log_request(handler: Any) -> None:
            endpoint = SUBMIT_HANDLERS.get(type(handler).__name__)
            if endpoint is not None and type(handler).__module__.startswith("cosmic_horizons_lab"):
                SUBMIT_LATENCY.labels(endpoint).observe(handler.request.request_time())
            original(handler)

        return log_request
