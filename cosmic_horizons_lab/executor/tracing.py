"""The job process's spans, recorded without OpenTelemetry and without a network.

A job on a compute node shares nothing with the server but its job directory, and its start-up
must stay fast for Script jobs, so it does not import OpenTelemetry: each finished span is one
JSON line appended to ``spans.jsonl`` (``protocol/jobdir.py``), in the job's trace (the
``traceparent`` of ``job.json``). The server reads the file when the job ends and re-emits the
spans through its own exporter with their ids, parents and times unchanged
(``server/tracing.py``), so the job's stages join the trace that began in the notebook.

A job without a trace context, or whose trace was not sampled, records nothing.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.protocol.jobdir import SPANS_FILE
from cosmic_horizons_lab.protocol.tracecontext import (
    TraceParent,
    format_traceparent,
    new_span_id,
    parse_traceparent,
)

_current: contextvars.ContextVar[Span | None] = contextvars.ContextVar("cosmic_span", default=None)


class Span:
    """One stage of the job, open until :meth:`end` appends it to ``spans.jsonl``."""

    def __init__(self, recorder: SpanRecorder, name: str, parent_id: str, attributes: dict[str, Any]) -> None:
        self.recorder = recorder
        self.name = name
        self.span_id = new_span_id()
        self.parent_id = parent_id
        self.attributes = dict(attributes)
        self.start_ns = time.time_ns()
        self.end_ns: int | None = None
        self.error: str | None = None

    @property
    def traceparent(self) -> str:
        """This span as a W3C ``traceparent``, for what the job starts (a kernel, a subprocess)."""
        return format_traceparent(self.recorder.trace_id, self.span_id, True)

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def end(self, error: BaseException | str | None = None) -> None:
        if self.end_ns is not None:
            return
        self.end_ns = time.time_ns()
        if error is not None:
            self.error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.recorder.write(self)


class SpanRecorder:
    """Spans of one job, children of its ``traceparent``; a no-op when there is none to join."""

    def __init__(self, job_dir: Path, traceparent: str | None, attributes: dict[str, Any] | None = None) -> None:
        self.path = Path(job_dir) / SPANS_FILE
        parent: TraceParent | None = parse_traceparent(traceparent)
        #: recording only within a sampled trace: the server's sampler decided at submission
        self.enabled = parent is not None and parent.sampled
        self.trace_id = parent.trace_id if parent else ""
        self.root_parent = parent.span_id if parent else ""
        #: attributes every span of this job carries (job id, correlation id)
        self.attributes = dict(attributes or {})
        #: spans started and not yet ended, in start order (ended with the job's error if it fails)
        self.open: dict[str, Span] = {}

    def start(self, name: str, **attributes: Any) -> Span | None:
        """Open a span under the current one (or the job's traceparent); None when not recording."""
        if not self.enabled:
            return None
        current = _current.get()
        parent = current.span_id if current is not None and current.recorder is self else self.root_parent
        span = Span(self, name, parent, {**self.attributes, **attributes})
        self.open[span.span_id] = span
        return span

    def end_all(self, error: BaseException | str | None = None) -> None:
        """End every open span, innermost first, with ``error`` (the job failed inside them)."""
        for span in reversed(list(self.open.values())):
            span.end(error)

    def begin(self, name: str, **attributes: Any) -> Span | None:
        """Open the job process's own span and make it current for the rest of the process (the
        stages are its children); the caller ends it."""
        span = self.start(name, **attributes)
        if span is not None:
            _current.set(span)
        return span

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span | None]:
        """``with recorder.span("flag"):`` the stage's span, current inside the block, ended
        (with the error, if the block raised) when it leaves."""
        span = self.start(name, **attributes)
        if span is None:
            yield None
            return
        token = _current.set(span)
        try:
            yield span
        except BaseException as exc:
            span.end(exc)
            raise
        finally:
            _current.reset(token)
            span.end()

    def write(self, span: Span) -> None:
        """Append one finished span (one ``write`` of one line: the reader takes whole lines only)."""
        self.open.pop(span.span_id, None)
        record = {
            "name": span.name,
            "trace_id": self.trace_id,
            "span_id": span.span_id,
            "parent_span_id": span.parent_id,
            "start_ns": span.start_ns,
            "end_ns": span.end_ns,
            "attributes": span.attributes,
            "status": "error" if span.error else "ok",
        }
        if span.error:
            record["error"] = span.error[:1000]
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
        except OSError:
            pass  # a trace is telemetry: losing a span must never fail the job


def current_span() -> Span | None:
    """The job's span open in this context, if any (the stage a progress report belongs to)."""
    return _current.get()


class StageSpans:
    """Consecutive stages whose boundaries only a progress callback sees (the imager's gridding
    then CLEAN run inside one science call): :meth:`enter` ends the open stage and starts the
    next, :meth:`close` ends the last."""

    def __init__(self, recorder: SpanRecorder) -> None:
        self.recorder = recorder
        self.open: Span | None = None
        self.parent = _current.get()

    def enter(self, name: str, **attributes: Any) -> None:
        if self.open is not None and self.open.name == name:
            return
        self.close()
        token = _current.set(self.parent)  # a sibling of the stage before, not its child
        try:
            self.open = self.recorder.start(name, **attributes)
        finally:
            _current.reset(token)

    def close(self, error: BaseException | None = None) -> None:
        if self.open is not None:
            self.open.end(error)
            self.open = None
