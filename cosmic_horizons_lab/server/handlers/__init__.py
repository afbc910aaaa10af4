"""REST and WebSocket handlers: thin. Parse, call the orchestrator, map errors.

Every handler is authenticated and authorised through jupyter-server's auth
(``@web.authenticated``/``@authorized``, resource ``cosmic-horizons``), and
every failure leaves as ``{"error", "message", "field"}`` with the status of
its domain error, mapped once in :meth:`APIBase.write_error`.
"""

from __future__ import annotations

from cosmic_horizons_lab.server.handlers.advice import (
    JobWebhooksHandler,
    MetricsHandler,
    OptimizeHandler,
    WebhookSecretHandler,
)
from cosmic_horizons_lab.server.handlers.catalog import (
    AgentsHandler,
    DatasetsHandler,
    GpuHistoryHandler,
    GpusHandler,
    HealthHandler,
    OpenAPIHandler,
    ResourcesHandler,
)
from cosmic_horizons_lab.server.handlers.data import (
    DatasetLayoutHandler,
    DatasetValidateHandler,
    StageHandler,
    StagingHandler,
    TransferEstimateHandler,
)
from cosmic_horizons_lab.server.handlers.jobs import (
    JobEventsHandler,
    JobHandler,
    JobListHandler,
    JobLogsHandler,
    JobOutputFileHandler,
    JobOutputsHandler,
    JobResourcesHandler,
    JobStatusHandler,
    PipelineHandler,
    SubmitBatchHandler,
    SubmitHandler,
)
from cosmic_horizons_lab.server.handlers.sky import (
    AnnotationsExportHandler,
    AnnotationsHandler,
    CoverageHandler,
    FootprintsHandler,
    SnapshotHandler,
    SnapshotPngHandler,
    SnapshotsHandler,
    SkySettingsHandler,
)
from cosmic_horizons_lab.server.handlers.queue import SlurmQueueHandler
from cosmic_horizons_lab.server.handlers.usage import (
    UsageAccountHandler,
    UsageAgentsHandler,
    UsageLeaderboardHandler,
)
from cosmic_horizons_lab.server.handlers.stream import EventStreamHandler, LatestEventHandler

JOB = r"(?P<job_id>[^/]+)"
DATASET = r"(?P<dataset_id>[^/]+)"


def routes() -> list[tuple[str, type]]:
    """URL patterns relative to ``{base_url}`` + :data:`~cosmic_horizons_lab.protocol.api.API_PREFIX`."""
    return [
        (r"jobs/submit", SubmitHandler),
        (r"jobs/submit-batch", SubmitBatchHandler),
        (r"pipelines", PipelineHandler),
        (r"jobs/history/list", JobListHandler),
        (r"jobs/search", JobListHandler),
        (r"jobs/resources/available", ResourcesHandler),
        (r"jobs/dataset/stage", StageHandler),
        (r"jobs/dataset/estimate-transfer", TransferEstimateHandler),
        (rf"jobs/dataset/{DATASET}/staging-status", StagingHandler),
        (rf"jobs/dataset/{DATASET}/validate", DatasetValidateHandler),
        (rf"jobs/dataset/{DATASET}/optimize", DatasetLayoutHandler),
        (r"jobs/optimize", OptimizeHandler),
        (r"jobs/metrics", MetricsHandler),
        (rf"jobs/{JOB}/webhooks", JobWebhooksHandler),
        (r"webhooks/secret", WebhookSecretHandler),
        (rf"jobs/{JOB}/status", JobStatusHandler),
        (rf"jobs/{JOB}/events", JobEventsHandler),
        (rf"jobs/{JOB}/logs", JobLogsHandler),
        (rf"jobs/{JOB}/resources", JobResourcesHandler),
        (rf"jobs/{JOB}/outputs", JobOutputsHandler),
        (rf"jobs/{JOB}/outputs/(?P<relative>.+)", JobOutputFileHandler),
        (rf"jobs/{JOB}", JobHandler),
        (r"agents", AgentsHandler),
        (r"slurm/queue", SlurmQueueHandler),
        (r"datasets", DatasetsHandler),
        (r"gpus", GpusHandler),
        (r"gpus/history", GpuHistoryHandler),
        (r"health", HealthHandler),
        (r"openapi.json", OpenAPIHandler),
        (r"events/latest", LatestEventHandler),
        (r"events", EventStreamHandler),
        (r"sky/settings", SkySettingsHandler),
        (r"sky/coverage", CoverageHandler),
        (r"sky/footprints", FootprintsHandler),
        (r"sky/annotations/export", AnnotationsExportHandler),
        (r"sky/annotations", AnnotationsHandler),
        (r"sky/annotations/(?P<annotation_id>[^/]+)", AnnotationsHandler),
        (r"sky/snapshots", SnapshotsHandler),
        (r"sky/snapshots/(?P<snapshot_id>[^/]+)/png", SnapshotPngHandler),
        (r"sky/snapshots/(?P<snapshot_id>[^/]+)", SnapshotHandler),
        (r"usage/accounts/(?P<user>[^/]+)", UsageAccountHandler),
        (r"usage/leaderboard", UsageLeaderboardHandler),
        (r"usage/agents", UsageAgentsHandler),
    ]
