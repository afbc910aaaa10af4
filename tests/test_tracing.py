"""One trace per job, from the notebook to the executor, held against OpenTelemetry's own SDK.

The server's spans go to the SDK's ``InMemorySpanExporter`` (a real SDK component, attached
through the app's span processor hook); the notebook's span is made by a TracerProvider of the
SDK in the test, standing for a kernel with OpenTelemetry set up, and crosses to the server as
the W3C ``traceparent`` that the SDK's own propagator writes. The OTLP export is received by a
small HTTP collector here and decoded with the OTLP protobuf classes of ``opentelemetry-proto``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cosmic_horizons_lab.notebook.client import Client
from cosmic_horizons_lab.protocol.jobdir import JOB_FILE, job_dir
from cosmic_horizons_lab.protocol.tracecontext import parse_traceparent

DEMO_ID = "VLA.TDEM0003.1src"
#: The stages each agent's spans name, in order (executor/agents/).
ALPHACAL_STAGES = ["read", "flag", "calibrate", "write"]


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def spans(lab) -> InMemorySpanExporter:
    """Every span the server finishes (its own and the executor's it re-emits)."""
    exporter = InMemorySpanExporter()
    lab.tracing.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def notebook() -> tuple[trace.Tracer, InMemorySpanExporter]:
    """A kernel's OpenTelemetry: an SDK TracerProvider of its own (the process-wide one is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("notebook"), exporter


@pytest.fixture
def client(api, jp_serverapp, jp_http_port, jp_base_url) -> Client:
    """The notebook client against the test's server (called from a thread: it is synchronous)."""
    return Client(f"http://localhost:{jp_http_port}{jp_base_url}", jp_serverapp.identity_provider.token)


# -- helpers -------------------------------------------------------------------------------
def hexid(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def job_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def one(found: list[ReadableSpan], name: str) -> ReadableSpan:
    named = [s for s in found if s.name == name]
    assert len(named) == 1, (name, [s.name for s in found])
    return named[0]


async def wait_for_spans(exporter: InMemorySpanExporter, trace_id: int, names: set[str],
                         timeout: float = 30.0) -> list[ReadableSpan]:
    """The job's trace once it holds every span named (the executor's arrive when the job ends)."""
    deadline = time.monotonic() + timeout
    while True:
        found = job_trace(exporter, trace_id)
        if names <= {s.name for s in found}:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"missing spans {sorted(names - {s.name for s in found})}")
        await asyncio.sleep(0.1)


def assert_job_tree(found: list[ReadableSpan], job: dict[str, Any], parent_span_id: int,
                    stages: list[str]) -> ReadableSpan:
    """The tree of one job: the request under the notebook's span, everything else under the
    request, the executor's stages under its run, in order and inside it. Returns the request."""
    request = one(found, "POST " + next(s.name.split(" ", 1)[1] for s in found if s.name.endswith("jobs/submit")))
    assert request.kind == SpanKind.SERVER and request.parent.span_id == parent_span_id
    assert request.attributes["cosmic.job_id"] == job["id"]
    assert request.attributes["cosmic.correlation_id"] == job["correlation_id"]
    assert request.attributes["http.response.status_code"] in (200, 201, 202)
    under_request = {s.name for s in found if s.parent is not None and s.parent.span_id == request.context.span_id}
    assert {"job.queuing", "job.running", "job.completed", "backend.submit", "backend.poll", "executor.run"} \
        <= under_request, under_request
    for span in found:
        if span is not request and span.name.startswith(("job.", "backend.")):
            assert span.attributes["cosmic.job_id"] == job["id"], span.name
            assert span.attributes["cosmic.correlation_id"] == job["correlation_id"], span.name
    submit = one(found, "backend.submit")
    assert submit.kind == SpanKind.CLIENT and submit.attributes["cosmic.backend_job_id"] == job["backend_job_id"]
    polls = [s for s in found if s.name == "backend.poll"]
    assert any(p.attributes["cosmic.backend.state"] == "COMPLETED" for p in polls)
    # transitions in the order they happened, after the request
    moves = [one(found, f"job.{s}") for s in ("queuing", "running", "completed")]
    assert [m.start_time for m in moves] == sorted(m.start_time for m in moves)
    assert moves[0].attributes["cosmic.job.previous_status"] == "QUEUED"
    run = one(found, "executor.run")
    assert run.resource.attributes["service.name"] == "cosmic-horizons-lab-executor"
    assert run.attributes["host.name"] and run.attributes["cosmic.job_id"] == job["id"]
    assert submit.end_time <= run.start_time <= run.end_time <= moves[2].start_time
    staged = sorted((s for s in found if s.parent is not None and s.parent.span_id == run.context.span_id),
                    key=lambda s: s.start_time)
    assert [s.name for s in staged] == stages
    for before, after in itertools.pairwise(staged):
        assert before.end_time <= after.start_time
    assert all(run.start_time <= s.start_time <= s.end_time <= run.end_time for s in staged)
    return request


# -- the whole trace of one job ---------------------------------------------------------------
@pytest.mark.timeout(120)
async def test_one_trace_from_the_notebook_to_the_executors_stages(client, spans, notebook, work_dir):
    tracer, notebook_spans = notebook
    with tracer.start_as_current_span("cell: calibrate the demo") as cell:
        job = await asyncio.to_thread(client.submit, "AlphaCal", DEMO_ID, {"gpu_count": 0, "rfi_strategy": "low"})
    sent = parse_traceparent(client.last_traceparent)
    done = await asyncio.to_thread(client.wait, job["id"], timeout=90)
    assert done["status"] == "COMPLETED", done
    trace_id = cell.get_span_context().trace_id
    # the client's request went out with the notebook's span as its parent
    assert sent.trace_id == hexid(trace_id, 32) and sent.span_id == hexid(cell.get_span_context().span_id, 16)
    assert [s.name for s in notebook_spans.get_finished_spans()] == ["cell: calibrate the demo"]

    found = await wait_for_spans(spans, trace_id, {"executor.run", *ALPHACAL_STAGES})
    request = assert_job_tree(found, done, cell.get_span_context().span_id, ALPHACAL_STAGES)
    flag = one(found, "flag")
    assert flag.attributes["cosmic.rfi_strategy"] == "low" and flag.end_time > flag.start_time
    # job.json carries the request's context: the executor's parent
    written = json.loads((job_dir(work_dir, "astro", job["id"]) / JOB_FILE).read_text())
    assert parse_traceparent(written["traceparent"]).span_id == hexid(request.context.span_id, 16)
    # nothing the job did went into another trace (reading it is each request's own trace)
    others = [s for s in spans.get_finished_spans() if s.kind != SpanKind.SERVER
              and s.attributes.get("cosmic.job_id") == job["id"] and s.context.trace_id != trace_id]
    assert not others, [s.name for s in others]


async def test_a_client_without_opentelemetry_set_up_still_starts_the_trace(client, spans, script, receiver):
    path = script("print('hello')\n", "hello.py")
    job = await asyncio.to_thread(client.submit, "Script", params={"path": path, "gpu_count": 0},
                                  webhook_url=receiver.url + "/hook")
    minted = parse_traceparent(client.last_traceparent)  # a fresh trace, minted by the client
    done = await asyncio.to_thread(client.wait, job["id"], timeout=60)
    assert done["status"] == "COMPLETED", done
    found = await wait_for_spans(spans, int(minted.trace_id, 16), {"executor.run", "job.completed", "webhook.deliver"})
    request = next(s for s in found if s.kind == SpanKind.SERVER)
    assert request.parent.span_id == int(minted.span_id, 16) and request.parent.is_remote
    # the webhook's delivery is in the job's trace, and hands the trace on to its receiver
    deliver = one(found, "webhook.deliver")
    assert deliver.parent.span_id == request.context.span_id and deliver.attributes["http.response.status_code"] == 200
    headers, body = receiver.received[0]
    assert json.loads(body)["job_id"] == job["id"]
    handed = parse_traceparent(headers["traceparent"])
    assert (handed.trace_id, handed.span_id) == (minted.trace_id, hexid(deliver.context.span_id, 16))


# -- Slurm --------------------------------------------------------------------------------------
@pytest.fixture
def slurm_lab_config(lab_config, monkeypatch):
    """The running Slurm test cluster (scripts/slurm-cluster; a missing one fails, never skips),
    without tests/slurm's session fixture, whose slow early jobs would hold the cluster's CPUs."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm-cluster"
    if subprocess.run([script, "status"], capture_output=True, timeout=60, check=False).returncode != 0:
        pytest.fail("the Slurm test cluster does not answer: scripts/slurm-cluster start", pytrace=False)
    for line in subprocess.run([script, "env"], capture_output=True, text=True, check=True).stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            monkeypatch.setenv(key, value)
    lab_config.update(backend="slurm", poll_interval=0.5)


@pytest.mark.timeout(120)
async def test_one_trace_through_slurm(slurm_lab_config, client, spans, notebook, script, work_dir):
    tracer, _ = notebook
    path = script("import os\nprint('TRACEPARENT', os.environ['TRACEPARENT'])\n", "traced.py")
    with tracer.start_as_current_span("cell: on the cluster") as cell:
        job = await asyncio.to_thread(client.submit, "Script", params={"path": path, "gpu_count": 0})
    done = await asyncio.to_thread(client.wait, job["id"], timeout=100)
    assert done["status"] == "COMPLETED" and done["backend_job_id"].isdigit(), done
    trace_id = cell.get_span_context().trace_id
    found = await wait_for_spans(spans, trace_id, {"executor.run", "job.completed"})
    request = assert_job_tree(found, done, cell.get_span_context().span_id, [])
    folder = job_dir(work_dir, "astro", job["id"])
    # sbatch's script hands the job its trace, and the executor hands its own span to the script
    exported = (folder / "slurm.sbatch").read_text().split("export TRACEPARENT=", 1)[1].split()[0]
    handed = parse_traceparent(exported)
    assert (handed.trace_id, handed.span_id, handed.sampled) == (hexid(trace_id, 32), hexid(request.context.span_id, 16), True)
    seen = parse_traceparent((folder / "stdout.log").read_text().split("TRACEPARENT ", 1)[1].split()[0])
    run = one(found, "executor.run")
    assert (seen.trace_id, seen.span_id) == (hexid(trace_id, 32), hexid(run.context.span_id, 16))


# -- configuration, sampling and logs -------------------------------------------------------------
class Receiver(ThreadingHTTPServer):
    """An HTTP receiver on 127.0.0.1 (an OTLP collector, a webhook's): keeps each POST's path,
    headers and body, and answers 200."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.got = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}}, body))
        self.server.got.set()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_the_otlp_exporter_is_off_by_default(lab):
    assert lab.otlp_endpoint == "" and lab.tracing.exporter is None
    assert lab.trace_sampling_ratio == 1.0


@pytest.fixture
def otlp_lab_config(receiver, lab_config):
    lab_config.update(otlp_endpoint=receiver.url, otlp_headers={"Authorization": "Bearer test-token"})


async def test_the_otlp_exporter_sends_the_spans_with_the_configured_headers(otlp_lab_config, receiver, api, lab):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    code, _, _ = await api.get("health", headers={"traceparent": traceparent})
    assert code == 200
    await asyncio.to_thread(lab.tracing.provider.force_flush)
    assert await asyncio.to_thread(receiver.got.wait, 10)
    headers, body = receiver.received[0]
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    assert headers["path"] == "/v1/traces" and headers["authorization"] == "Bearer test-token"
    exported = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    health = [s for s in exported if s.name.endswith("/health")]
    assert health and health[0].trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert health[0].parent_span_id.hex() == "b7ad6b7169203331"
    service = {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}
    assert service["service.name"] == "cosmic-horizons-lab"


@pytest.fixture
def unsampled_lab_config(lab_config):
    lab_config.update(trace_sampling_ratio=0.0)


async def test_sampling_follows_the_ratio_and_the_callers_decision(unsampled_lab_config, api, spans):
    await api.get("health")  # a new trace, ratio 0: not recorded
    assert spans.get_finished_spans() == ()
    # a caller who sampled its trace is followed (parent-based)
    await api.get("health", headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    (recorded,) = spans.get_finished_spans()
    assert format(recorded.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_log_records_carry_the_trace_and_span_ids(api, spans, caplog):
    caplog.set_level(logging.INFO)
    code, err, _ = await api.post("jobs/submit", {"agent": "NoSuchAgent"},
                                  headers={"traceparent": "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01"})
    assert code == 422, err
    (request,) = [s for s in spans.get_finished_spans() if s.name.endswith("jobs/submit")]
    assert request.attributes["http.response.status_code"] == 422
    logged = [r for r in caplog.records if "422" in r.getMessage()]
    assert logged, [r.getMessage() for r in caplog.records]
    assert {(r.trace_id, r.span_id) for r in logged} == {
        ("5bf92f3577b34da6a3ce929d0e0e4736", format(request.context.span_id, "016x"))}
    # outside any span the fields are there, empty, so a log format naming them never fails
    outside = logging.getLogger("cosmic_horizons_lab.server").makeRecord("x", logging.INFO, "f", 1, "m", (), None)
    assert (outside.trace_id, outside.span_id) == ("", "")


# -- the job process's side, and what the server takes from it ---------------------------------
def test_the_job_process_records_only_within_a_sampled_trace(tmp_path):
    from cosmic_horizons_lab.executor.tracing import SpanRecorder
    from cosmic_horizons_lab.protocol.jobdir import SPANS_FILE, read_records

    for untraced in (None, "", "not a traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"):
        with SpanRecorder(tmp_path, untraced).span("read") as span:
            assert span is None
    assert not (tmp_path / SPANS_FILE).exists()
    recorder = SpanRecorder(tmp_path, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", {"cosmic.job_id": "j"})
    with pytest.raises(ZeroDivisionError), recorder.span("flag", rows=3):
        raise ZeroDivisionError("the stage failed")
    (written,), _ = read_records(tmp_path, 0, SPANS_FILE)
    assert written["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and written["parent_span_id"] == "00f067aa0ba902b7"
    assert written["status"] == "error" and "ZeroDivisionError" in written["error"]
    assert written["attributes"] == {"cosmic.job_id": "j", "rows": 3} and written["end_ns"] >= written["start_ns"]


def test_the_server_takes_only_the_jobs_own_trace_from_its_spans_file():
    from types import SimpleNamespace

    from cosmic_horizons_lab.server.tracing import Tracing

    tracing, exporter = Tracing(), InMemorySpanExporter()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    job = SimpleNamespace(id="j1", correlation_id="c1", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    good = {"name": "grid", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "1111111111111111",
            "parent_span_id": "00f067aa0ba902b7", "start_ns": 1_000, "end_ns": 5_000,
            "attributes": {"host.name": "c101", "sizes": [1, 2], "odd": {"a": 1}}, "status": "ok"}
    foreign = {**good, "trace_id": "5bf92f3577b34da6a3ce929d0e0e4736", "span_id": "2222222222222222"}
    broken = {**good, "span_id": "xyz"}
    assert tracing.ingest(job, [good, foreign, broken, {"name": "no ids"}]) == 1
    (span,) = exporter.get_finished_spans()
    assert (span.name, span.start_time, span.end_time) == ("grid", 1_000, 5_000)
    assert (span.context.span_id, span.parent.span_id) == (0x1111111111111111, 0x00F067AA0BA902B7)
    assert list(span.attributes["sizes"]) == [1, 2] and span.attributes["odd"] == "{'a': 1}"
    assert span.resource.attributes["host.name"] == "c101"
    unsampled = SimpleNamespace(**{**job.__dict__, "traceparent": job.traceparent[:-2] + "00"})
    assert tracing.ingest(unsampled, [good]) == 0


async def test_a_staging_transfer_is_a_trace_linked_to_the_request_that_queued_it(api, spans):
    tp = "00-6bf92f3577b34da6a3ce929d0e0e4736-20f067aa0ba902b7-01"
    code, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": DEMO_ID}, headers={"traceparent": tp})
    assert code == 202, st
    deadline = time.monotonic() + 30
    while not [s for s in spans.get_finished_spans() if s.name == "staging.transfer"]:
        assert time.monotonic() < deadline, "no staging.transfer span"
        await asyncio.sleep(0.1)
    (transfer,) = [s for s in spans.get_finished_spans() if s.name == "staging.transfer"]
    (request,) = [s for s in spans.get_finished_spans() if s.name.endswith("jobs/dataset/stage")]
    assert transfer.parent is None and transfer.context.trace_id != request.context.trace_id
    assert [link.context.span_id for link in transfer.links] == [request.context.span_id]
    assert transfer.attributes["cosmic.staging.transfer_id"] == st["transfer_id"]
    assert transfer.attributes["cosmic.staging.status"] == "completed"
    assert transfer.attributes["cosmic.staging.bytes"] == st["total_bytes"] > 0
