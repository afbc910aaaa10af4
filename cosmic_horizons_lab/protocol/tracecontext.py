"""W3C Trace Context (``traceparent``): the one home of its format, standard library only.

A trace starts in the notebook or the browser, crosses the server and ends in the job process
on a compute node; each hop reads and writes the same header (https://www.w3.org/TR/trace-context/):
``00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>``, flag bit 0 = sampled. The job
process and the notebook client speak it without OpenTelemetry installed, so it lives here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

#: The header (and ``job.json`` key) that carries a trace into a request or a job.
TRACEPARENT_HEADER = "traceparent"
#: The environment variable a job process (and whatever it starts) finds its trace context in.
TRACEPARENT_ENV = "TRACEPARENT"

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceParent:
    """One parsed ``traceparent``: the trace, the span that is the parent, whether it is sampled."""

    trace_id: str
    span_id: str
    sampled: bool = True

    def header(self) -> str:
        return format_traceparent(self.trace_id, self.span_id, self.sampled)


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The trace context in ``value``, or None when it is absent or malformed (then a trace starts
    afresh rather than failing the request: the header is advisory, as the W3C spec says)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _INVALID_TRACE or span_id == _INVALID_SPAN:
        return None
    return TraceParent(trace_id, span_id, bool(int(flags, 16) & 1))


def format_traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def new_trace_id() -> str:
    """A random 128-bit trace id (never the all-zero invalid one)."""
    while True:
        value = os.urandom(16).hex()
        if value != _INVALID_TRACE:
            return value


def new_span_id() -> str:
    """A random 64-bit span id (never the all-zero invalid one)."""
    while True:
        value = os.urandom(8).hex()
        if value != _INVALID_SPAN:
            return value


def new_traceparent(sampled: bool = True) -> str:
    """A fresh trace whose root is a span the caller names by this header (the notebook client
    without OpenTelemetry: its request is that root)."""
    return format_traceparent(new_trace_id(), new_span_id(), sampled)
