"""The server's traces (OpenTelemetry): one trace per job, from the notebook to the executor.

A job's trace is the trace of the request that submitted it. That request's span (W3C
``traceparent`` in, from the notebook client or the sidebar) is stored with the job
(``jobs.traceparent``) and written into its ``job.json``; everything that happens to the job
later, in the orchestrator's loop where no request is current, is recorded as a child of it:

- ``job.<status>``: each transition (``server/jobs/lifecycle.py``);
- ``backend.submit``, ``backend.poll``, ``backend.cancel``: the backend's calls
  (``server/jobs/dispatch.py``, ``reconcile.py``, ``orchestrator.py``; ``backends/`` knows no
  OpenTelemetry);
- ``webhook.deliver``: each delivery of the job's webhook, its ``traceparent`` sent on;
- the executor's stages (``executor.run``, ``read``, ``flag``...), which the job process writes to
  ``spans.jsonl`` (``executor/tracing.py``) and :meth:`Tracing.ingest` re-emits here unchanged
  (trace, span and parent ids, times) when the job ends.

Requests (``server/handlers/base.py``) and staging transfers have spans of their own. Nothing is
exported unless ``c.CosmicHorizons.otlp_endpoint`` is set; a test attaches the SDK's
``InMemorySpanExporter`` with :meth:`Tracing.add_span_processor`. Log records carry the current
``trace_id`` and ``span_id`` (:func:`install_log_correlation`).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    ReadableSpan,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cosmic_horizons_lab._version import __version__
from cosmic_horizons_lab.protocol.tracecontext import TRACEPARENT_HEADER, parse_traceparent

log = logging.getLogger(__name__)

PROPAGATOR = TraceContextTextMapPropagator()
SERVICE_NAME = "cosmic-horizons-lab"
#: The most spans one job's ``spans.jsonl`` may add to the trace (a runaway job is cut short).
MAX_INGESTED_SPANS = 2000
#: OTLP/HTTP's path for traces, added to an endpoint given without a path.
OTLP_TRACES_PATH = "/v1/traces"
_HEX = re.compile(r"^[0-9a-f]+$")


class Traced(Protocol):
    """What a job span needs of a job: its trace context and the ids it is known by."""

    id: str
    correlation_id: str
    traceparent: str | None


class Tracing:
    """The app's one TracerProvider (per app, not the process-wide global: a test runs several
    servers in one process), its sampler and exporter, and the spans every service records.

    ``Tracing.disabled()`` records nothing at all, for services built without the app.
    """

    def __init__(
        self,
        *,
        otlp_endpoint: str = "",
        otlp_headers: Mapping[str, str] | None = None,
        sampling_ratio: float = 1.0,
        service_name: str = SERVICE_NAME,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        #: whether anything receives spans (an exporter, a test's processor): a job's spans are
        #: only made then, as nothing else would read them (a request's span always is: its ids
        #: go into the job and the logs)
        self.recording = False
        self.processors = SynchronousMultiSpanProcessor()
        self.resource = Resource.create({"service.name": service_name, "service.version": __version__,
                                         "host.name": socket.gethostname()})
        self.service_name = service_name
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(min(max(sampling_ratio, 0.0), 1.0))),
            resource=self.resource, shutdown_on_exit=False, active_span_processor=self.processors,
        )
        self.tracer: trace.Tracer = (
            self.provider.get_tracer("cosmic_horizons_lab.server", __version__) if enabled else trace.NoOpTracer()
        )
        self.exporter: Any = None
        if enabled and otlp_endpoint:
            self.exporter = otlp_exporter(otlp_endpoint, dict(otlp_headers or {}))
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self.add_span_processor(BatchSpanProcessor(self.exporter))
        self._executor_resources: dict[str, Resource] = {}

    @classmethod
    def disabled(cls) -> Tracing:
        return cls(enabled=False)

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Send finished spans to ``processor`` too (a test's ``SimpleSpanProcessor(InMemorySpanExporter())``)."""
        self.processors.add_span_processor(processor)
        self.recording = self.enabled

    def shutdown(self) -> None:
        """Flush and stop the exporters (the server's stop)."""
        self.provider.shutdown()

    # -- requests -------------------------------------------------------------------------
    def start_request_span(self, method: str, route: str, headers: Mapping[str, str],
                           attributes: dict[str, Any]) -> trace.Span:
        """A SERVER span for one request, a child of the request's ``traceparent`` if it has one."""
        parent = PROPAGATOR.extract(carrier={k.lower(): v for k, v in headers.items()
                                             if k.lower() in ("traceparent", "tracestate")})
        return self.tracer.start_span(f"{method} {route}", context=parent, kind=SpanKind.SERVER,
                                      attributes=attributes)

    # -- a job's spans ------------------------------------------------------------------
    def job_context(self, job: Traced) -> otel_context.Context | None:
        """The context of ``job``'s trace (its submission's span), or None when it has none."""
        return context_of(job.traceparent)

    def start_job_span(self, name: str, job: Traced, *, kind: SpanKind = SpanKind.INTERNAL,
                       attributes: Mapping[str, Any] | None = None, start_time: int | None = None) -> trace.Span:
        """A span in ``job``'s trace, whatever context is current; a request that is current (a
        cancel) is linked. A job without a trace gets a span that records nothing."""
        if not self.recording:
            return trace.INVALID_SPAN
        parent = self.job_context(job)
        if parent is None:
            return trace.INVALID_SPAN
        links = []
        current = trace.get_current_span().get_span_context()
        if current.is_valid and current.trace_id != trace.get_current_span(parent).get_span_context().trace_id:
            links.append(Link(current))
        attrs = {"cosmic.job_id": job.id, "cosmic.correlation_id": job.correlation_id or "", **(attributes or {})}
        return self.tracer.start_span(name, context=parent, kind=kind, attributes=attrs, links=links,
                                      start_time=start_time)

    @contextmanager
    def job_span(self, name: str, job: Traced, *, kind: SpanKind = SpanKind.INTERNAL,
                 attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span]:
        """``with tracing.job_span("backend.cancel", job):``: current inside, the error recorded."""
        with self.job_spans(name, [job], kind=kind, attributes=attributes) as spans:
            yield spans[0]

    @contextmanager
    def job_spans(self, name: str, jobs: Iterable[Traced], *, kind: SpanKind = SpanKind.INTERNAL,
                  attributes: Mapping[str, Any] | None = None) -> Iterator[list[trace.Span]]:
        """One span per job around one call that serves them all (an array's sbatch): each job's
        trace shows the call. An exception is recorded on each, then raised."""
        spans = [self.start_job_span(name, job, kind=kind, attributes=attributes) for job in jobs]
        try:
            yield spans
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
            raise
        finally:
            for span in spans:
                span.end()

    def record_job_span(self, name: str, job: Traced, start_ns: int, end_ns: int, *,
                        kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None) -> None:
        """A span in ``job``'s trace for a call that already happened (one poll serves every job;
        its span goes into the trace of each job whose state it changed)."""
        span = self.start_job_span(name, job, kind=kind, attributes=attributes, start_time=start_ns)
        span.end(end_time=end_ns)

    # -- the executor's spans -----------------------------------------------------------
    def ingest(self, job: Traced, records: list[dict[str, Any]]) -> int:
        """Re-emit the spans the job process wrote (``spans.jsonl``) through this provider's
        processors, with their own ids, parents, times and attributes; returns how many.

        Only spans of the job's own sampled trace are taken (the file is the user's to write),
        with plain attribute values; what does not fit is skipped, not fatal.
        """
        parent = parse_traceparent(job.traceparent)
        if not self.recording or parent is None or not parent.sampled:
            return 0
        flags = TraceFlags(TraceFlags.SAMPLED)
        trace_id = int(parent.trace_id, 16)
        scope = InstrumentationScope("cosmic_horizons_lab.executor", __version__)
        emitted = 0
        for rec in records[:MAX_INGESTED_SPANS]:
            try:
                if rec.get("trace_id") != parent.trace_id or not _is_hex(rec.get("span_id"), 16) \
                        or not _is_hex(rec.get("parent_span_id"), 16):
                    continue
                start, end = int(rec["start_ns"]), int(rec["end_ns"])
                attributes = {str(k): _attribute(v) for k, v in (rec.get("attributes") or {}).items()}
                attributes.setdefault("cosmic.job_id", job.id)
                status = Status(StatusCode.ERROR, str(rec.get("error", ""))[:500]) if rec.get("status") == "error" \
                    else Status(StatusCode.UNSET)
                span = ReadableSpan(
                    name=str(rec["name"])[:200],
                    context=SpanContext(trace_id, int(rec["span_id"], 16), is_remote=False, trace_flags=flags),
                    parent=SpanContext(trace_id, int(rec["parent_span_id"], 16), is_remote=True, trace_flags=flags),
                    resource=self._executor_resource(str(attributes.get("host.name", ""))),
                    attributes=attributes, kind=SpanKind.INTERNAL, status=status,
                    start_time=start, end_time=max(start, end), instrumentation_scope=scope,
                )
            except (KeyError, TypeError, ValueError):
                continue
            self.processors.on_end(span)
            emitted += 1
        return emitted

    def _executor_resource(self, host: str) -> Resource:
        """The job process as its own service (on its own host), so a trace shows where each stage ran."""
        if host not in self._executor_resources:
            attrs = {"service.name": f"{self.service_name}-executor", "service.version": __version__}
            if host:
                attrs["host.name"] = host
            self._executor_resources[host] = Resource.create(attrs)
        return self._executor_resources[host]


def otlp_exporter(endpoint: str, headers: dict[str, str]) -> Any:
    """The OTLP/HTTP (protobuf) span exporter for ``endpoint`` (``http://collector:4318`` or the
    full ``…/v1/traces``). Imported here only: a server that exports nothing never loads it."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # the ``otlp`` extra
        raise RuntimeError(
            "c.CosmicHorizons.otlp_endpoint needs opentelemetry-exporter-otlp-proto-http "
            "(pip install 'cosmic-horizons-lab[otlp]')"
        ) from exc
    _, sep, rest = endpoint.partition("://")
    if sep and "/" not in rest.rstrip("/"):
        endpoint = endpoint.rstrip("/") + OTLP_TRACES_PATH
    return OTLPSpanExporter(endpoint=endpoint, headers=headers)


@functools.lru_cache(maxsize=4096)  # a job's context is asked for at each of its transitions
def context_of(traceparent: str | None) -> otel_context.Context | None:
    """An OpenTelemetry context whose current span is the remote span ``traceparent`` names."""
    if parse_traceparent(traceparent) is None:
        return None
    return PROPAGATOR.extract(carrier={TRACEPARENT_HEADER: traceparent})


def traceparent_of(span: trace.Span | None = None) -> str | None:
    """``span`` (default: the current one) as a W3C ``traceparent``; None when there is none."""
    span = span if span is not None else trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT_HEADER)


def install_log_correlation() -> None:
    """Every log record gets ``trace_id`` and ``span_id`` (hex; empty outside a span), so a log
    line can be found from its trace and back (``c.ServerApp.log_format`` may show them:
    ``%(trace_id)s``). Installed once per process, as a log-record factory: a filter on our
    logger would not see records of its child loggers, and a format naming the fields must
    find them on every record, not only ours."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "cosmic_trace_ids", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else ""
        return record

    factory.cosmic_trace_ids = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and bool(_HEX.match(value)) and int(value, 16) != 0


def _attribute(value: Any) -> Any:
    """An attribute value OpenTelemetry takes: a scalar, a list of one kind of scalar, else text."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, bool, int, float)) for v in value) \
            and len({type(v) for v in value}) == 1:
        return list(value)
    return str(value)[:1000]


def untraced_context() -> contextvars.Context:
    """A copy of the current context in which no span is current: for starting background loops
    from a request (the orchestrator's would otherwise record every job under that request)."""
    ctx = contextvars.copy_context()
    ctx.run(otel_context.attach, otel_context.Context())
    return ctx
