"""A small synchronous client for the REST API and the event stream.

It is what the notebook ``Lab`` object, the tests and the benchmarks use, so
there is one way to talk to the server from Python. Standard library HTTP
(no extra dependency in a kernel) and ``websockets``' sync client for the
stream, which reconnects with ``after=<last id>`` and so never misses an event.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from cosmic_horizons_lab.protocol.api import API_PREFIX
from cosmic_horizons_lab.protocol.tracecontext import TRACEPARENT_HEADER, new_traceparent
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any



class ApiError(Exception):
    """An error answer from the server, with its status, code, message and field."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None, body: Any = None) -> None:
        super().__init__(f"{status} {error}: {message}" + (f" (field: {field})" if field else ""))
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.body = body


def submission(
    agent: str,
    dataset_id: str | None = None,
    params: dict[str, Any] | None = None,
    *,
    priority: int | None = None,
    depends_on: Sequence[Any] | Any | None = None,
    notes: str | None = None,
    webhook_url: str | None = None,
    **agent_params: Any,
) -> dict[str, Any]:
    """The JSON body of one submission (``POST jobs/submit``, or one entry of ``jobs/submit-batch``).

    The one place a submission is built, whoever submits (``Lab.submit``,
    ``Lab.submit_batch``, a test, a benchmark): keyword arguments other than the
    named ones are the agent's parameters, merged over ``params``; fields left
    ``None`` are omitted (the server's defaults apply); ``depends_on`` takes one
    job or a list, as ids or as handles with an ``id``.
    """
    body: dict[str, Any] = {"agent": agent, "params": {**(params or {}), **agent_params}}
    if dataset_id is not None:
        body["dataset_id"] = dataset_id
    if depends_on is not None:
        parents = depends_on if isinstance(depends_on, (list, tuple)) else [depends_on]
        depends_on = [str(getattr(parent, "id", parent)) for parent in parents]
    fields = {"priority": priority, "depends_on": depends_on, "notes": notes, "webhook_url": webhook_url}
    body.update({key: value for key, value in fields.items() if value is not None})
    return body


@contextmanager
def _client_span(method: str, path: str, headers: dict[str, str]) -> Iterator[None]:
    """The request as a CLIENT span when the kernel has OpenTelemetry set up, its context in
    ``headers``; without it (or with no SDK configured) a fresh W3C ``traceparent``, so the
    server's trace still starts here. A ``traceparent`` the caller gave is kept."""
    if TRACEPARENT_HEADER in headers:
        yield
        return
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        headers[TRACEPARENT_HEADER] = new_traceparent()
        yield
        return
    tracer = trace.get_tracer("cosmic_horizons_lab.notebook")
    with tracer.start_as_current_span(f"{method} {path}", kind=trace.SpanKind.CLIENT):
        propagate.inject(headers)
        if TRACEPARENT_HEADER not in headers:  # no SDK configured: nothing would record this span
            headers[TRACEPARENT_HEADER] = new_traceparent()
        yield


class Client:
    """``Client("http://localhost:8888/", token="…")``; every method returns decoded JSON."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.base_url = url if url.endswith("/") else url + "/"
        self.api_url = self.base_url + API_PREFIX
        self.token = token
        self.timeout = timeout
        #: the ``traceparent`` the last request was sent with: its trace is the job's, for a
        #: submission (find it in the collector by its trace id, the second field)
        self.last_traceparent: str | None = None

    # -- plumbing ----------------------------------------------------------------------
    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"token {self.token}"
        headers.update(extra or {})
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        url = self.api_url + path.lstrip("/")
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            url += "?" + urllib.parse.urlencode(query)
        data = None
        hdrs = self._headers(headers)
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        with _client_span(method, path.lstrip("/").split("?")[0], hdrs):
            self.last_traceparent = hdrs.get(TRACEPARENT_HEADER)
            req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
            payload = self._send(req)
        if raw:
            return payload
        return json.loads(payload) if payload else None

    def _send(self, req: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                doc = json.loads(text)
            except ValueError:
                doc = {"error": f"http_{exc.code}", "message": text.decode(errors="replace")[:500], "field": None}
            raise ApiError(exc.code, doc.get("error", ""), doc.get("message", ""), doc.get("field"), doc) from None
        return payload

    # -- jobs --------------------------------------------------------------------------
    def submit(
        self,
        agent: str,
        dataset_id: str | None = None,
        params: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        traceparent: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Submit one job; the body is :func:`submission`'s (``fields``: priority, webhook_url,
        depends_on, notes; any other keyword is an agent parameter). ``traceparent``: the trace
        the job joins (default: the current OpenTelemetry span's, else a new trace)."""
        headers = {}
        if traceparent:
            headers[TRACEPARENT_HEADER] = traceparent
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if correlation_id:
            headers["X-Correlation-ID"] = correlation_id
        return self.request("POST", "jobs/submit", submission(agent, dataset_id, params, **fields), headers=headers)

    def submit_batch(self, jobs: list[dict[str, Any]], parallel_limit: int | None = None) -> dict[str, Any]:
        """Submit several jobs; each entry holds :func:`submission`'s arguments (agent, dataset_id,
        params, priority, depends_on, notes, webhook_url; other keys are agent parameters)."""
        body: dict[str, Any] = {"jobs": [submission(**entry) for entry in jobs]}
        if parallel_limit is not None:
            body["parallelLimit"] = parallel_limit
        return self.request("POST", "jobs/submit-batch", body)

    def submit_pipeline(self, stages: list[dict[str, Any]], parallel_limit: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"stages": stages}
        if parallel_limit is not None:
            body["parallelLimit"] = parallel_limit
        return self.request("POST", "pipelines", body)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"jobs/{job_id}")

    def status(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"jobs/{job_id}/status")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"jobs/{job_id}")

    def search(self, **filters: Any) -> dict[str, Any]:
        """agent, dataset_id, status, batch_id, from_date, to_date, page, page_size."""
        return self.request("GET", "jobs/search", params=filters)

    def history(self, page: int = 1, page_size: int = 20) -> dict[str, Any]:
        return self.request("GET", "jobs/history/list", params={"page": page, "page_size": page_size})

    def events(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        return self.request("GET", f"jobs/{job_id}/events", params={"after": after})["events"]

    def logs(self, job_id: str, offset: int = 0) -> dict[str, Any]:
        return self.request("GET", f"jobs/{job_id}/logs", params={"offset": offset})

    def outputs(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"jobs/{job_id}/outputs")

    def download(self, job_id: str, path: str, dest: str | Path) -> Path:
        data = self.request("GET", f"jobs/{job_id}/outputs/{urllib.parse.quote(path)}", raw=True)
        dest = Path(dest)
        dest.write_bytes(data)
        return dest

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        interval: float = 0.25,
        statuses: frozenset[str] | set[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED"}),
    ) -> dict[str, Any]:
        """Poll until the job reaches one of ``statuses`` (by default: until it ends); returns the record."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout}s")
            time.sleep(interval)

    # -- the rest ----------------------------------------------------------------------
    def agents(self) -> list[dict[str, Any]]:
        return self.request("GET", "agents")["agents"]

    def datasets(self) -> list[dict[str, Any]]:
        return self.request("GET", "datasets")["datasets"]

    def gpus(self) -> dict[str, Any]:
        return self.request("GET", "gpus")

    def gpu_history(self, seconds: int = 300) -> dict[str, Any]:
        return self.request("GET", "gpus/history", params={"seconds": seconds})

    def resources(self) -> dict[str, Any]:
        return self.request("GET", "jobs/resources/available")

    def health(self) -> dict[str, Any]:
        return self.request("GET", "health")

    # -- the event stream --------------------------------------------------------------
    def stream_url(self, after: int | None) -> str:
        scheme = "wss" if self.api_url.startswith("https") else "ws"
        url = scheme + self.api_url[self.api_url.index(":"):] + "events"
        return url + (f"?after={after}" if after is not None else "")

    def stream(
        self, after: int | None = None, *, stop: threading.Event | None = None, reconnect_delay: float = 0.5
    ) -> Iterator[dict[str, Any]]:
        """The caller's events, forever (or until ``stop`` is set), reconnecting as needed.

        ``after=None`` starts with what happens from now on; ``after=0`` replays everything.
        """
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        last = after
        if last is None:
            last = self._latest_event_id()
        while stop is None or not stop.is_set():
            try:
                headers = {"Authorization": f"token {self.token}"} if self.token else {}
                with connect(self.stream_url(last), additional_headers=headers, open_timeout=self.timeout) as ws:
                    while stop is None or not stop.is_set():
                        try:
                            message = ws.recv(timeout=0.5)
                        except TimeoutError:
                            continue
                        decoded = json.loads(message)
                        for event in decoded if isinstance(decoded, list) else [decoded]:
                            if event["id"] > last:
                                last = event["id"]
                                yield event
            except (ConnectionClosed, OSError):
                if stop is not None and stop.is_set():
                    return
                time.sleep(reconnect_delay)

    def _latest_event_id(self) -> int:
        return self.request("GET", "events/latest")["last_event_id"]

    def subscribe(self, callback: Callable[[dict[str, Any]], None], after: int | None = None) -> "Subscription":
        """Call ``callback(event)`` from a background thread for each event; ``.close()`` stops it."""
        return Subscription(self, callback, after)


class Subscription:
    def __init__(self, client: Client, callback: Callable[[dict[str, Any]], None], after: int | None) -> None:
        self._stop = threading.Event()
        self.last_id = after
        self.errors: list[BaseException] = []

        def run() -> None:
            for event in client.stream(after, stop=self._stop):
                self.last_id = event["id"]
                try:
                    callback(event)
                except Exception as exc:  # a bad callback must not kill the stream
                    self.errors.append(exc)

        self._thread = threading.Thread(target=run, name="cosmic-horizons-events", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
