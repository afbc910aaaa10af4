"""The notebook API: ``Lab()`` finds the Jupyter server it runs under and submits jobs.

>>> from cosmic_horizons_lab.notebook.lab import Lab
>>> lab = Lab()                                   # the server this kernel runs under
>>> job = lab.submit("AlphaCal", "VLA.TDEM0003.1src", rfi_strategy="high_sensitivity")
>>> job                                           # a live progress panel
>>> job.wait()                                    # blocks, with a progress bar
>>> job.result, job.outputs()                     # the agent's result and its files
>>> lab.queue()                                   # a live table of your jobs
>>> lab.gpus()                                    # a live GPU heatmap

Errors from the API are raised as :class:`cosmic_horizons_lab.notebook.client.ApiError`
carrying the server's message (and the offending field, when there is one).

The notebook runtime in one picture: a ``Lab`` talks to the server through
one :class:`~cosmic_horizons_lab.notebook.client.Client` (REST, and one event
stream); it keeps one :class:`Job` per job id (``jobs.py``), to which each
event is applied once; widgets render from those jobs. Finding the server is
``discovery.py``; output files are ``outputs.py``. This module is the ``Lab``
itself, and re-exports what was always imported from here.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any, Sequence

from cosmic_horizons_lab.notebook.client import ApiError, Client
from cosmic_horizons_lab.notebook.discovery import ServerNotFound, find_server
from cosmic_horizons_lab.notebook.jobs import Batch, Job, JobFailed, JobRegistry
from cosmic_horizons_lab.notebook.outputs import Output, Outputs
from cosmic_horizons_lab.notebook.state import TERMINAL

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.widgets import GpuHeatmap, JobQueue, Staging
    from cosmic_horizons_lab.notebook.widgets.live import EventFeed, UpdatePump

__all__ = ["ApiError", "Batch", "Job", "JobFailed", "Lab", "Output", "Outputs", "ServerNotFound", "TERMINAL",
           "find_server"]


class Lab:
    """A connection to the Cosmic Horizons API of one Jupyter server.

    ``Lab()`` finds the server this kernel runs under (see :func:`find_server`);
    ``Lab(url=..., token=...)`` names one.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, client: Any = None,
                 update_interval: float = 0.1) -> None:
        if client is None:
            url, token, info = find_server(url, token)
            client = Client(url, token=token)
        else:
            info = {}
        self.url = url or getattr(client, "base_url", None)
        self.token = token if token is not None else getattr(client, "token", None)
        self.server_info: dict[str, Any] = info
        self.client = client
        self._update_interval = update_interval
        self._feed: EventFeed | None = None
        self._pump: UpdatePump | None = None
        self._lock = threading.Lock()
        self._jobs = JobRegistry(self)

    def __repr__(self) -> str:
        return f"<Lab {self.url}>"

    # -- live machinery, shared by every job and widget of this lab
    @property
    def feed(self) -> "EventFeed":
        with self._lock:
            if self._feed is None:
                from cosmic_horizons_lab.notebook.widgets.live import EventFeed

                self._feed = EventFeed(self.client.subscribe, self._latest_event_id)
            return self._feed

    @property
    def pump(self) -> "UpdatePump":
        with self._lock:
            if self._pump is None:
                from cosmic_horizons_lab.notebook.widgets.live import UpdatePump

                self._pump = UpdatePump(self._update_interval)
            return self._pump

    def follow(self) -> None:
        """Open the event stream (once): from now on every job handle of this lab stays current.

        ``job.wait()`` and the widgets call it before they read a snapshot, so
        no change can fall between the snapshot and the stream.
        """
        self.feed.add(self._jobs)

    def on_new_job(self, callback: Any) -> None:
        """Call ``callback(job)`` for each job this lab first hears of from the event stream
        (a handle is made for it, the event applied): how the queue learns of new jobs."""
        self._jobs.on_new_job(callback)

    def close(self) -> None:
        """Stop the event stream and the widgets' updates."""
        if self._feed is not None:
            self._feed.close()
        if self._pump is not None:
            self._pump.close()

    # -- submitting (the body is built by client.submission, once)
    def submit(self, agent: str, dataset_id: str | None = None, *, params: dict[str, Any] | None = None,
               priority: int | None = None, depends_on: Sequence[Any] | Any | None = None,
               notes: str | None = None, webhook_url: str | None = None, **agent_params: Any) -> Job:
        """Submit one job; keyword arguments other than the named ones are the agent's parameters.

        >>> lab.submit("AlphaCal", "VLA.TDEM0003.1src", rfi_strategy="high_sensitivity", gpu_count=1)
        >>> lab.submit("Script", params={"path": "scripts/fit.py", "args": {"n": 3}})
        """
        record = self.client.submit(agent, dataset_id, params, priority=priority, depends_on=depends_on,
                                    notes=notes, webhook_url=webhook_url, **agent_params)
        for warning in record.pop("warnings", None) or []:  # e.g. GPUs asked of a server without one
            warnings.warn(f"{warning.get('field')}: {warning.get('message')}", UserWarning, stacklevel=2)
        return self._jobs.handle(record, new=True)

    def submit_batch(self, jobs: Sequence[dict[str, Any]], *, parallel_limit: int | None = None) -> Batch:
        """Submit several jobs at once; at most ``parallel_limit`` run together.

        Each entry is a dict like ``{"agent": ..., "dataset_id": ..., "params": {...}}``
        (other keys than agent/dataset_id/params/priority/depends_on/notes/webhook_url
        are taken as parameters). Displays as a live timeline.
        """
        answer = self.client.submit_batch(list(jobs), parallel_limit)
        return Batch(self, [self._jobs.handle(r, new=True) for r in answer.get("jobs", [])],
                     answer.get("batch_id"))

    def pipeline(self, stages: Sequence[dict[str, Any]], *, parallel_limit: int | None = None) -> Batch:
        """Submit stages with dependencies (e.g. AlphaCal → ImageReconstruction → AnomalyDetection).

        Each stage is a dict with ``agent``, ``params`` and optionally ``name``,
        ``dataset_id`` and ``depends_on`` (names of earlier stages), as
        ``POST pipelines`` takes it. Displays as a live timeline.
        """
        answer = self.client.submit_pipeline(list(stages), parallel_limit)
        return Batch(self, [self._jobs.handle(r, new=True) for r in answer["jobs"]],
                     answer.get("pipeline_id") or answer.get("batch_id"), stages=answer.get("stages"))

    # -- reading
    def job(self, job_id: str) -> Job:
        """A handle on an existing job (this lab's one handle on it, refreshed)."""
        return self._jobs.handle(self.client.job(job_id))

    def jobs(self, *, agent: str | None = None, dataset_id: str | None = None, status: str | None = None,
             from_date: str | None = None, to_date: str | None = None, page: int = 1,
             page_size: int = 50) -> list[Job]:
        """Your jobs, newest first, filtered (``GET jobs/search``)."""
        body = self.client.search(agent=agent, dataset_id=dataset_id, status=status, from_date=from_date,
                                  to_date=to_date, page=page, page_size=page_size)
        return [self._jobs.handle(r) for r in _items(body)]

    def recent_jobs(self, limit: int = 1000, **filters: Any) -> list[Job]:
        """Up to ``limit`` of your jobs, newest first, every page read (what the queue shows).

        ``filters``: agent, dataset_id, status, batch_id (``jobs/search``); none: the history.
        """
        filters = {k: v for k, v in filters.items() if v is not None}
        records: list[dict[str, Any]] = []
        page, page_size = 1, min(limit, 100)
        while len(records) < limit:
            if filters:
                body = self.client.search(page=page, page_size=page_size, **filters)
            else:
                body = self.client.history(page, page_size)
            items = _items(body)
            records.extend(items)
            total = body.get("total") if isinstance(body, dict) else None
            if len(items) < page_size or (total is not None and len(records) >= total):
                break
            page += 1
        return [self._jobs.handle(r) for r in records[:limit]]

    def cancel(self, job: Job | str) -> Job:
        """Cancel a job (by handle or id)."""
        handle = job if isinstance(job, Job) else self._jobs.handle({"id": str(job)})
        return handle.cancel()

    def datasets(self) -> list[dict[str, Any]]:
        """The registered datasets (id, size, format, shape…)."""
        return _items(self.client.datasets())

    def agents(self) -> list[dict[str, Any]]:
        """The agents, each with its parameters' JSON Schema."""
        return _items(self.client.agents())

    def resources(self) -> Any:
        """GPU pools: backend, model, total and free GPUs."""
        return self.client.resources()

    def gpu_history(self, seconds: float = 300) -> dict[str, Any]:
        """The GPUs' samples over the last ``seconds`` (``gpus/history``), with the GPU list
        and, on a server without one, why (what the heatmap draws)."""
        body = self.client.gpu_history(int(seconds))
        if isinstance(body, dict) and "gpus" not in body:
            body = {**body, **{k: v for k, v in self.client.gpus().items() if k in ("gpus", "available", "reason")}}
        return body

    # -- widgets
    def queue(self, *, limit: int = 1000, agent: str | None = None, dataset_id: str | None = None,
              status: str | None = None, batch_id: str | None = None) -> "JobQueue":
        """A live table of your jobs with cancel buttons."""
        from cosmic_horizons_lab.notebook.widgets import JobQueue

        return JobQueue(self, limit=limit, agent=agent, dataset_id=dataset_id, status=status, batch_id=batch_id)

    def gpus(self, seconds: float = 300, *, refresh: float = 2.0) -> "GpuHeatmap":
        """A live heatmap of the server's GPUs (utilisation and memory over the last ``seconds``)."""
        from cosmic_horizons_lab.notebook.widgets import GpuHeatmap

        return GpuHeatmap(self, seconds=seconds, refresh=refresh)

    def stage(self, dataset_id: str, target_resource: str | None = None, *, priority: str | None = None,
              convert: str | None = None, force: bool | None = None) -> "Staging":
        """Stage a dataset to a target (scratch) for jobs; a live transfer panel with cancel."""
        from cosmic_horizons_lab.notebook.widgets import Staging

        return Staging(self, dataset_id, target_resource, priority=priority, convert=convert, force=force)

    def staging(self, dataset_id: str, target_resource: str | None = None) -> "Staging":
        """The newest staging of a dataset, live, without starting one."""
        from cosmic_horizons_lab.notebook.widgets import Staging

        return Staging(self, dataset_id, target_resource, start=False)

    def sky(self, **kwargs: Any) -> Any:
        """Every result of yours on an interactive sky map: images, sources, footprints and the
        coverage of your processed sky; jobs that complete later appear as they do."""
        from cosmic_horizons_lab.notebook.widgets.sky import Sky

        return Sky(self, None, **kwargs)

    def usage(self, period: str = "week", *, user: str | None = None, from_date: str | None = None,
              to_date: str | None = None) -> Any:
        """Charts of your usage: GPU-hours, jobs and success rate per ``period`` (day, week, month),
        and each agent's runtime over time; the leaderboard too where the server lets you read it.
        ``user``: another account (operators only)."""
        from cosmic_horizons_lab.notebook.widgets.usage import Usage

        return Usage(self, period=period, user=user, from_date=from_date, to_date=to_date)

    def _latest_event_id(self) -> int:
        return int(self.client.request("GET", "events/latest")["last_event_id"])


def _items(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("items", "jobs", "datasets", "agents", "results"):
            if isinstance(body.get(key), list):
                return body[key]
    return []
