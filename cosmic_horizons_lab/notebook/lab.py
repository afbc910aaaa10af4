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
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from cosmic_horizons_lab.notebook.client import ApiError, Client

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.widgets import GpuHeatmap, JobProgress, JobQueue, Staging, Timeline
    from cosmic_horizons_lab.notebook.widgets.live import EventFeed, UpdatePump

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})

#: Fields of a submission that are not the agent's parameters.
SUBMISSION_FIELDS = ("priority", "webhook_url", "depends_on", "notes")

__all__ = ["ApiError", "Batch", "Job", "JobFailed", "Lab", "Output", "ServerNotFound", "find_server"]


class ServerNotFound(RuntimeError):
    """No Jupyter server to talk to: pass ``url=`` (and ``token=``)."""


class JobFailed(RuntimeError):
    """``Job.wait()`` saw the job end FAILED or CANCELLED."""

    def __init__(self, job: "Job") -> None:
        self.job = job
        error = job.record.get("error") or ""
        super().__init__(f"job {job.id} ended {job.status}" + (f": {error}" if error else ""))


# --------------------------------------------------------------------------- discovery


def _ancestors(pid: int) -> set[int]:
    try:
        import psutil

        return {p.pid for p in psutil.Process(pid).parents()}
    except Exception:
        return set()


def _running_servers() -> list[dict[str, Any]]:
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return []
    return list(list_running_servers())


def find_server(url: str | None = None, token: str | None = None) -> tuple[str, str | None, dict[str, Any]]:
    """Where the API is: ``(server url, token, server info)``.

    In order: the ``url=``/``token=`` given; ``COSMIC_HORIZONS_URL`` (and
    ``COSMIC_HORIZONS_TOKEN``); on a JupyterHub single-user server, the hub's
    environment (``JUPYTERHUB_SERVICE_URL`` or ``JUPYTERHUB_SERVICE_PREFIX``,
    with ``JUPYTERHUB_API_TOKEN``); else the running-server list, preferring
    the server this kernel is a child of, then one whose root holds the
    working directory, then the newest.
    """
    if url:
        return url, token if token is not None else os.environ.get("COSMIC_HORIZONS_TOKEN"), {}
    if os.environ.get("COSMIC_HORIZONS_URL"):
        return os.environ["COSMIC_HORIZONS_URL"], token or os.environ.get("COSMIC_HORIZONS_TOKEN"), {}

    servers = _running_servers()
    hub_token = os.environ.get("JUPYTERHUB_API_TOKEN")
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if hub_token and (os.environ.get("JUPYTERHUB_SERVICE_URL") or prefix):
        hub_url = os.environ.get("JUPYTERHUB_SERVICE_URL")
        info = next((s for s in servers if prefix and s.get("base_url") == prefix), {})
        if not hub_url:
            hub_url = info.get("url") or f"http://127.0.0.1:{os.environ.get('JUPYTERHUB_SERVICE_PORT', 8888)}{prefix}"
        elif prefix and urllib.parse.urlparse(hub_url).path in ("", "/"):
            hub_url = hub_url.rstrip("/") + prefix
        # Some spawners give the address the server binds (all interfaces): talk to it locally.
        hub_url = hub_url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
        return hub_url, token or hub_token, info

    if not servers:
        raise ServerNotFound(
            "No running Jupyter server found. Start JupyterLab with this package installed, "
            "or pass Lab(url='http://host:port/', token='...')."
        )
    ancestors = _ancestors(os.getpid())
    cwd = Path.cwd().resolve()

    def rank(info: dict[str, Any]) -> tuple[int, int, float]:
        root = info.get("root_dir") or info.get("notebook_dir") or ""
        try:
            inside = cwd.is_relative_to(Path(root).resolve()) if root else False
        except OSError:
            inside = False
        return (info.get("pid") in ancestors, inside, float(info.get("pid", 0)))

    info = max(servers, key=rank)
    return info["url"], token if token is not None else (info.get("token") or None), info


# --------------------------------------------------------------------------- outputs


class Output:
    """One output file of a job: ``name``, ``size``, ``sha256``, ``url``; ``load()`` reads it."""

    def __init__(self, lab: "Lab", job_id: str, entry: dict[str, Any], directory: str | None = None) -> None:
        self.lab = lab
        self.job_id = job_id
        self.entry = entry
        #: Path below the job's outputs/ folder.
        self.name: str = str(entry.get("path") or entry.get("name") or "")
        self.size: int | None = entry.get("size_bytes", entry.get("size"))
        self.sha256: str | None = entry.get("sha256")
        self.url: str | None = entry.get("url") or entry.get("download_url")
        self.directory = directory

    def __repr__(self) -> str:
        return f"<Output {self.name} ({self.size} bytes) of job {self.job_id}>"

    def local_path(self) -> Path | None:
        """The file itself, when this kernel shares the server's filesystem."""
        if not self.directory:
            return None
        candidate = Path(self.directory) / self.name
        return candidate if candidate.is_file() else None

    def read_bytes(self) -> bytes:
        local = self.local_path()
        if local is not None:
            return local.read_bytes()
        path = urllib.parse.quote(self.name)
        return self.lab.client.request("GET", f"jobs/{_q(self.job_id)}/outputs/{path}", raw=True)

    def load(self) -> Any:
        """The file as a Python object: JSON → dict/list, FITS → astropy HDUList,
        .npy/.npz → numpy, .csv/.ecsv/.vot → astropy Table, text → str, else bytes."""
        name = self.name.lower()
        data = self.read_bytes()
        if name.endswith(".json"):
            return json.loads(data)
        if name.endswith(".jsonl"):
            return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        if name.endswith((".fits", ".fit", ".fits.gz", ".fts")):
            from astropy.io import fits

            return fits.open(io.BytesIO(data))
        if name.endswith((".npy", ".npz")):
            import numpy as np

            return np.load(io.BytesIO(data), allow_pickle=False)
        if name.endswith((".ecsv", ".csv", ".vot", ".xml")):
            from astropy.table import Table

            fmt = {"ecsv": "ascii.ecsv", "csv": "ascii.csv"}.get(name.rsplit(".", 1)[-1], "votable")
            return Table.read(io.BytesIO(data) if fmt == "votable" else data.decode(), format=fmt)
        if name.endswith((".txt", ".log", ".md", ".py")):
            return data.decode()
        return data


class Outputs(list):
    """A job's outputs: a list of :class:`Output`, also indexable by file name."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for output in self:
                if output.name == key or output.name.endswith("/" + key):
                    return output
            raise KeyError(key)
        return super().__getitem__(key)

    def names(self) -> list[str]:
        return [o.name for o in self]


# --------------------------------------------------------------------------- jobs


class Job:
    """A handle on one job. Displays as a live :class:`~cosmic_horizons_lab.notebook.widgets.JobProgress`."""

    def __init__(self, lab: "Lab", record: dict[str, Any]) -> None:
        self.lab = lab
        self.id: str = str(record["id"])
        self.record: dict[str, Any] = dict(record)
        self._changed = threading.Condition()
        self._widget: JobProgress | None = None

    def __repr__(self) -> str:
        progress = self.record.get("progress")
        pct = f" {100 * progress:.0f}%" if isinstance(progress, (int, float)) and self.status == "RUNNING" else ""
        return f"<Job {self.id} {self.record.get('agent', '')} {self.status}{pct}>"

    # -- state
    @property
    def status(self) -> str:
        return str(self.record.get("status") or "QUEUED")

    @property
    def progress(self) -> float:
        return float(self.record.get("progress") or 0.0)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def result(self) -> Any:
        """The agent's result (JSON), once the job completed."""
        if self.done and self.record.get("result") is None:
            self.refresh()
        return self.record.get("result")

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    def refresh(self) -> "Job":
        """Read the whole record from the API."""
        self._update_from(self.lab._record(self.id))
        return self

    def _update_from(self, record: dict[str, Any]) -> None:
        from cosmic_horizons_lab.notebook.widgets.live import merge_snapshot

        with self._changed:
            self.record = merge_snapshot(self.record, record)
            self._changed.notify_all()

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("job_id") != self.id:
            return
        from cosmic_horizons_lab.notebook.widgets.live import apply_event

        with self._changed:
            if apply_event(self.record, event):
                self._changed.notify_all()

    # -- actions
    def cancel(self) -> "Job":
        """Cancel the job (a no-op on a job already finished)."""
        try:
            self._update_from(self.lab._cancel_record(self.id))
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.refresh()
        return self

    def wait(self, timeout: float | None = None, *, progress: bool = True, check: bool = True,
             poll: float = 2.0) -> "Job":
        """Block until the job ends; show a progress bar meanwhile.

        Raises :class:`JobFailed` when it ended FAILED or CANCELLED (unless
        ``check=False``) and :class:`TimeoutError` after ``timeout`` seconds.
        Events wake it at once; the API is polled every ``poll`` seconds too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _ProgressBar(self) if progress else None
        try:
            self.lab.feed.add(self)
        except Exception:  # no event stream: polling alone still gets there
            pass
        self.refresh()
        last_poll = time.monotonic()
        while not self.done:
            if bar:
                bar.update()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
            with self._changed:
                self._changed.wait(timeout=min(0.25, poll))
            if time.monotonic() - last_poll >= poll:
                self.refresh()
                last_poll = time.monotonic()
        if bar:
            bar.update(final=True)
        if check and self.status != "COMPLETED":
            raise JobFailed(self)
        return self

    # -- results
    def events(self, after: int = 0) -> list[dict[str, Any]]:
        """The job's events so far (replayed from the server's store)."""
        return self.lab.client.events(self.id, after=after)

    def logs(self, offset: int = 0) -> str:
        """The job's log (stdout and stderr) from byte ``offset``."""
        body = self.lab.client.logs(self.id, offset=int(offset))
        if isinstance(body, dict):
            return str(body.get("data", body.get("text", "")))
        return str(body)

    def outputs(self) -> Outputs:
        """The job's output files (name, size, sha256, url); each ``.load()``-s as a Python object."""
        body = self.lab.client.outputs(self.id)
        entries = body if isinstance(body, list) else body.get("files", body.get("outputs", body.get("items", [])))
        directory = body.get("directory") if isinstance(body, dict) else None
        return Outputs(Output(self.lab, self.id, e, directory) for e in entries)

    def output(self, name: str) -> Any:
        """One output file, loaded (see :meth:`Output.load`)."""
        return self.outputs()[name].load()

    def image(self) -> Any:
        """The job's image as an astropy ``HDUList`` (the first FITS output)."""
        fits_outputs = [o for o in self.outputs() if o.name.lower().endswith((".fits", ".fit", ".fits.gz"))]
        if not fits_outputs:
            raise FileNotFoundError(f"job {self.id} has no FITS image among its outputs")
        rank = {"restored.fits": 0, "image.fits": 1, "dirty.fits": 2}
        fits_outputs.sort(key=lambda o: rank.get(o.name.rsplit("/", 1)[-1].lower(), 3))
        return fits_outputs[0].load()

    def sources(self) -> list[dict[str, Any]] | None:
        """Sources found on the image (an AnomalyDetection catalogue), when the job wrote one."""
        from cosmic_horizons_lab.notebook.quicklook import sources_from

        result = self.result
        found = sources_from(result) if result else None
        if found:
            return found
        tables = [o for o in self.outputs() if o.name.lower().endswith((".ecsv", ".csv", ".json"))]
        for word in ("source", "catalog", "anomal"):  # a source list first, anomalies last
            for output in tables:
                if word in output.name.lower():
                    try:
                        return sources_from(output.load())
                    except Exception:
                        continue
        return None

    def show(self, **kwargs: Any) -> Any:
        """A quick-look picture of the image result: RA/Dec axes, sources circled. A matplotlib Figure."""
        from cosmic_horizons_lab.notebook.quicklook import quicklook

        sources = kwargs.pop("sources", None)
        if sources is None:
            try:
                sources = self.sources()
            except Exception:
                sources = None
        return quicklook(self.image(), sources=sources, title=kwargs.pop("title", f"{self.record.get('agent', '')} {self.id[:8]}"), **kwargs)

    def quicklook_png(self) -> bytes:
        from cosmic_horizons_lab.notebook.quicklook import figure_png

        return figure_png(self.show())

    # -- display
    def widget(self) -> "JobProgress":
        """The live progress panel (one per handle)."""
        if self._widget is None:
            from cosmic_horizons_lab.notebook.widgets import JobProgress

            self._widget = JobProgress(self)
        return self._widget

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return _widget_bundle(self, self.widget, include, exclude)


class _ProgressBar:
    """``Job.wait``'s progress bar: the live widget in a notebook, a text line elsewhere."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.widget = None
        self._last_text = ""
        if _in_kernel():
            try:
                from IPython.display import display

                shown = job._widget is not None  # the job's panel is on screen already: it is the bar
                self.widget = job.widget()
                if not shown:
                    display(self.widget)
            except Exception:
                self.widget = None

    def update(self, final: bool = False) -> None:
        if self.widget is not None:
            # The pump runs on its own thread; flushing here too keeps the bar current
            # even where a kernel delivers background-thread messages late.
            self.job.lab.pump.flush()
            return
        width = 30
        filled = int(round(width * min(1.0, max(0.0, self.job.progress))))
        text = f"\r{self.job.id[:8]} [{'#' * filled}{'.' * (width - filled)}] {100 * self.job.progress:5.1f}% {self.job.status:<9}"
        if text != self._last_text:
            sys.stderr.write(text + ("\n" if final else ""))
            sys.stderr.flush()
            self._last_text = text


def _widget_bundle(owner: Any, make_widget: Any, include: Any, exclude: Any) -> Any:
    """The live widget's display data, with the owner's repr as its plain text."""
    try:
        bundle = make_widget()._repr_mimebundle_(include=include, exclude=exclude)
    except Exception:  # no anywidget, or no view bundle: a plain repr still shows something
        return {"text/plain": repr(owner)}
    data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
    return {**data, "text/plain": repr(owner)}, metadata


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and getattr(shell, "kernel", None) is not None
    except Exception:
        return False


class Batch(list):
    """Jobs submitted together (a batch or a pipeline); displays as a live :class:`Timeline`."""

    def __init__(self, lab: "Lab", jobs: Iterable[Job], batch_id: str | None = None,
                 stages: dict[str, str] | None = None) -> None:
        super().__init__(jobs)
        self.lab = lab
        self.batch_id = batch_id
        by_id = {job.id: job for job in self}
        #: A pipeline's jobs by stage name.
        self.stages: dict[str, Job] = {name: by_id[i] for name, i in (stages or {}).items() if i in by_id}
        self._timeline: Timeline | None = None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self.stages[key]
        return super().__getitem__(key)

    def show(self, **kwargs: Any) -> Any:
        """The pipeline's image with the sources a later stage found circled (a matplotlib Figure)."""
        image_job = next((j for j in reversed(self) if j.record.get("agent") == "ImageReconstruction"), None)
        if image_job is None:
            image_job = next(j for j in self if j.record.get("agent") != "AnomalyDetection")
        sources = None
        for job in self:
            if job.record.get("agent") == "AnomalyDetection" and job.status == "COMPLETED":
                sources = job.sources()
        return image_job.show(sources=sources, **kwargs)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for job in self:
            counts[job.status] = counts.get(job.status, 0) + 1
        return f"<Batch {self.batch_id or ''} {len(self)} jobs {counts}>"

    def wait(self, timeout: float | None = None, *, check: bool = True) -> "Batch":
        """Wait for every job; raises the first :class:`JobFailed` when ``check``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in self:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            job.wait(remaining, progress=False, check=check)
        return self

    def timeline(self) -> "Timeline":
        if self._timeline is None:
            from cosmic_horizons_lab.notebook.widgets import Timeline

            names = {job.id: name for name, job in self.stages.items()}
            labels = [f"{names[j.id]} · {j.record.get('agent', '')}" if j.id in names else None for j in self]
            self._timeline = Timeline(self.lab, self, labels=labels if names else None)
        return self._timeline

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return _widget_bundle(self, self.timeline, include, exclude)


# --------------------------------------------------------------------------- the lab


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

    def __repr__(self) -> str:
        return f"<Lab {self.url}>"

    # -- live machinery, shared by every widget of this lab
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

    def close(self) -> None:
        """Stop the event stream and the widgets' updates."""
        if self._feed is not None:
            self._feed.close()
        if self._pump is not None:
            self._pump.close()

    # -- submitting
    def submit(self, agent: str, dataset_id: str | None = None, *, params: dict[str, Any] | None = None,
               priority: int | None = None, depends_on: Sequence[Any] | Any | None = None,
               notes: str | None = None, webhook_url: str | None = None, **agent_params: Any) -> Job:
        """Submit one job; keyword arguments other than the named ones are the agent's parameters.

        >>> lab.submit("AlphaCal", "VLA.TDEM0003.1src", rfi_strategy="high_sensitivity", gpu_count=1)
        >>> lab.submit("Script", params={"path": "scripts/fit.py", "args": {"n": 3}})
        """
        body = _submission(agent, dataset_id, params, agent_params, priority=priority,
                           depends_on=depends_on, notes=notes, webhook_url=webhook_url)
        fields = {k: v for k, v in body.items() if k not in ("agent", "dataset_id", "params")}
        record = self.client.submit(agent, dataset_id=dataset_id, params=body["params"], **fields)
        return Job(self, record)

    def submit_batch(self, jobs: Sequence[dict[str, Any]], *, parallel_limit: int | None = None) -> Batch:
        """Submit several jobs at once; at most ``parallel_limit`` run together.

        Each entry is a dict like ``{"agent": ..., "dataset_id": ..., "params": {...}}``
        (other keys than agent/dataset_id/params/priority/depends_on/notes/webhook_url
        are taken as parameters). Displays as a live timeline.
        """
        submissions = []
        for entry in jobs:
            entry = dict(entry)
            agent = entry.pop("agent")
            dataset_id = entry.pop("dataset_id", None)
            params = entry.pop("params", None)
            top = {k: entry.pop(k) for k in SUBMISSION_FIELDS if k in entry}
            submissions.append(_submission(agent, dataset_id, params, entry, **top))
        answer = self.client.submit_batch(submissions, parallel_limit)
        return Batch(self, [Job(self, r) for r in answer.get("jobs", [])], answer.get("batch_id"))

    def pipeline(self, stages: Sequence[dict[str, Any]], *, parallel_limit: int | None = None) -> Batch:
        """Submit stages with dependencies (e.g. AlphaCal → ImageReconstruction → AnomalyDetection).

        Each stage is a dict with ``agent``, ``params`` and optionally ``name``,
        ``dataset_id`` and ``depends_on`` (names of earlier stages), as
        ``POST pipelines`` takes it. Displays as a live timeline.
        """
        answer = self.client.submit_pipeline(list(stages), parallel_limit)
        return Batch(self, [Job(self, r) for r in answer["jobs"]], answer.get("pipeline_id") or answer.get("batch_id"),
                     stages=answer.get("stages"))

    # -- reading
    def job(self, job_id: str) -> Job:
        """A handle on an existing job."""
        return Job(self, self._record(job_id))

    def jobs(self, *, agent: str | None = None, dataset_id: str | None = None, status: str | None = None,
             from_date: str | None = None, to_date: str | None = None, page: int = 1,
             page_size: int = 50) -> list[Job]:
        """Your jobs, newest first, filtered (``GET jobs/search``)."""
        body = self.client.search(agent=agent, dataset_id=dataset_id, status=status, from_date=from_date,
                                  to_date=to_date, page=page, page_size=page_size)
        return [Job(self, r) for r in _items(body)]

    def cancel(self, job: Job | str) -> Job:
        """Cancel a job (by handle or id)."""
        handle = job if isinstance(job, Job) else Job(self, {"id": job})
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

    # -- what the widgets call (records as dicts)
    def _record(self, job_id: str) -> dict[str, Any]:
        return self.client.job(job_id)

    def _cancel_record(self, job_id: str) -> dict[str, Any]:
        record = self.client.cancel(job_id)
        return record if isinstance(record, dict) and "id" in record else self._record(job_id)

    def _list_records(self, *, limit: int = 1000, **filters: Any) -> list[dict[str, Any]]:
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
        return records[:limit]

    def _latest_event_id(self) -> int:
        return int(self.client.request("GET", "events/latest")["last_event_id"])

    def _gpu_history(self, seconds: float) -> dict[str, Any]:
        body = self.client.gpu_history(int(seconds))
        if isinstance(body, dict) and "gpus" not in body:
            body = {**body, **{k: v for k, v in self.client.gpus().items() if k in ("gpus", "available", "reason")}}
        return body


def _q(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


def _items(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("items", "jobs", "datasets", "agents", "results"):
            if isinstance(body.get(key), list):
                return body[key]
    return []


def _submission(agent: str, dataset_id: str | None, params: dict[str, Any] | None, agent_params: dict[str, Any],
                **fields: Any) -> dict[str, Any]:
    merged = {**(params or {}), **agent_params}
    body: dict[str, Any] = {"agent": agent, "params": merged}
    if dataset_id is not None:
        body["dataset_id"] = dataset_id
    for key, value in fields.items():
        if value is None:
            continue
        if key == "depends_on":
            deps = value if isinstance(value, (list, tuple)) else [value]
            value = [d.id if isinstance(d, Job) else str(d) for d in deps]
        body[key] = value
    return body
