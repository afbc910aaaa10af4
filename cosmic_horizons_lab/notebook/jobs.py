"""Job handles: the kernel's one copy of each job, kept current, and what they display as.

A :class:`~cosmic_horizons_lab.notebook.lab.Lab` keeps one :class:`Job` per job id
(:class:`JobRegistry`). Each ``job.*`` event of the Lab's stream is applied once,
to that handle's record; REST snapshots (a refresh, a cancel's answer, a
listing) are merged into the same record, never moving it back. Widgets that
show jobs (progress panel, timeline, queue) register a listener on the handle
and render from ``job.record``; they never write it. Two copies of a job that
each apply the same event, and then have to be merged, cannot drift apart if
there is only one.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable

from cosmic_horizons_lab.notebook.client import ApiError
from cosmic_horizons_lab.notebook.outputs import Output, Outputs
from cosmic_horizons_lab.notebook.state import TERMINAL, Event, apply_event, merge_snapshot

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.lab import Lab
    from cosmic_horizons_lab.notebook.widgets import JobProgress, Timeline

log = logging.getLogger(__name__)

__all__ = ["Batch", "Job", "JobFailed", "JobRegistry", "TERMINAL"]

#: A job's listener: called with the job after each change of its record.
JobListener = Callable[["Job"], None]


class JobFailed(RuntimeError):
    """``Job.wait()`` saw the job end FAILED or CANCELLED."""

    def __init__(self, job: "Job") -> None:
        self.job = job
        error = job.record.get("error") or ""
        super().__init__(f"job {job.id} ended {job.status}" + (f": {error}" if error else ""))


def _ref(callback: Callable[..., Any]) -> Callable[[], Callable[..., Any] | None]:
    """A widget's bound method is held weakly (a widget nobody shows stops being told); a function strongly."""
    if inspect.ismethod(callback):
        return weakref.WeakMethod(callback)
    return lambda: callback


class Job:
    """A handle on one job. Displays as a live :class:`~cosmic_horizons_lab.notebook.widgets.JobProgress`.

    ``record`` is the job as this kernel knows it; it is replaced (never
    changed in place) on each change, so a reader always sees a whole state.
    Get handles from the :class:`~cosmic_horizons_lab.notebook.lab.Lab`
    (``lab.submit``, ``lab.job``…): it keeps one per job id, current.
    """

    def __init__(self, lab: "Lab", record: dict[str, Any]) -> None:
        self.lab = lab
        self.id: str = str(record["id"])
        self.record: dict[str, Any] = dict(record)
        self._changed = threading.Condition()
        self._listeners: list[Callable[[], JobListener | None]] = []
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
        self._on_record(self.lab.client.job(self.id))
        return self

    def watch(self) -> "Job":
        """Keep this handle current from the Lab's event stream (``wait()`` and the widgets do)."""
        self.lab.follow()
        return self

    def add_listener(self, callback: JobListener) -> None:
        """Call ``callback(job)`` after each change of the record (from the event thread, or
        whichever thread read a snapshot): keep it short, e.g. a widget's ``invalidate``."""
        with self._changed:
            self._listeners.append(_ref(callback))

    def remove_listener(self, callback: JobListener) -> None:
        with self._changed:
            self._listeners = [ref for ref in self._listeners if ref() not in (None, callback)]

    # -- how the record changes: here only, once per event or snapshot
    def _on_event(self, event: Event) -> None:
        if event.get("job_id") != self.id:
            return
        with self._changed:
            record = dict(self.record)
            if not apply_event(record, event):
                return
            self.record = record
            self._changed.notify_all()
        self._notify()

    def _on_record(self, snapshot: dict[str, Any]) -> None:
        with self._changed:
            record = merge_snapshot(self.record, snapshot)
            if record == self.record:
                return
            self.record = record
            self._changed.notify_all()
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            refs = list(self._listeners)
        for ref in refs:
            callback = ref()
            if callback is None:
                continue
            try:
                callback(self)
            except Exception:  # one broken view must not stop the others, nor the event thread
                log.exception("job listener failed")

    # -- actions
    def cancel(self, *, check: bool = False) -> "Job":
        """Cancel the job: a no-op on a job already finished, unless ``check`` (then the
        server's refusal is raised as :class:`~cosmic_horizons_lab.notebook.client.ApiError`)."""
        try:
            answer = self.lab.client.cancel(self.id)
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.refresh()  # it had ended: show how
            if check:
                raise
            return self
        if isinstance(answer, dict) and "id" in answer:
            self._on_record(answer)
        else:
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
            self.watch()
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
        """A quick-look picture of the image result: RA/Dec axes, sources circled. A matplotlib Figure.

        Keyword arguments go to :func:`~cosmic_horizons_lab.notebook.quicklook.quicklook`.
        """
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

        return figure_png(self.show(pyplot=False))

    def sky(self, **kwargs: Any) -> Any:
        """This job on an interactive sky map: its image, sources, footprint and annotations (live)."""
        from cosmic_horizons_lab.notebook.widgets.sky import Sky

        return Sky(self.lab, [self], **kwargs)

    # -- display
    def widget(self) -> "JobProgress":
        """The live progress panel (one per handle)."""
        if self._widget is None:
            from cosmic_horizons_lab.notebook.widgets import JobProgress

            self._widget = JobProgress(self)
        return self._widget

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return _widget_bundle(self, self.widget, include, exclude)


class JobRegistry:
    """A Lab's job handles, one per id, and its event feed's listener for ``job.*`` events.

    Each event is applied once, to the one handle of its job. Handles are held
    weakly: a job nobody holds (no variable, no widget) is forgotten, and its
    events are skipped, unless someone asked to hear of new jobs
    (:meth:`on_new_job`, the queue): then a handle is made for it first.
    """

    def __init__(self, lab: "Lab") -> None:
        self._lab = lab
        self._jobs: weakref.WeakValueDictionary[str, Job] = weakref.WeakValueDictionary()
        self._new_job: list[Callable[[], Callable[[Job], None] | None]] = []
        self._lock = threading.Lock()

    def handle(self, record: dict[str, Any], *, new: bool = False) -> Job:
        """The handle of ``record``'s job, made or updated with it.

        ``new``: the record is a submission's answer. Its handle is announced to the new-job
        listeners if it is made here: the job's ``job.submitted`` event may arrive after the
        answer, would then find the handle already there, and would announce nothing.
        """
        job_id = str(record["id"])
        with self._lock:
            job = self._jobs.get(job_id)
            made = job is None
            if made:
                job = self._jobs[job_id] = Job(self._lab, record)
            announce = self._listeners() if made and new else []
        if not made:
            job._on_record(record)
        self._announce(job, announce)
        return job

    def on_new_job(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback(job)`` with each handle made from now on, whether the job was first
        heard of from the stream or from an answer of the API."""
        with self._lock:
            self._new_job.append(_ref(callback))

    def _listeners(self) -> list[Callable[[Job], None]]:
        return [cb for cb in (ref() for ref in self._new_job) if cb is not None]

    @staticmethod
    def _announce(job: Job, callbacks: list[Callable[[Job], None]]) -> None:
        for callback in callbacks:
            try:
                callback(job)
            except Exception:
                log.exception("new-job listener failed")

    def on_event(self, event: Event) -> None:
        job_id = event.get("job_id")
        if not job_id or not str(event.get("type", "")).startswith("job."):
            return
        announce: list[Callable[[Job], None]] = []
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                announce = self._listeners()
                if not announce:
                    return
                job = self._jobs[job_id] = Job(self._lab, {"id": job_id, "status": "QUEUED"})
        job._on_event(event)
        self._announce(job, announce)


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

    def sky(self, **kwargs: Any) -> Any:
        """The pipeline on a sky map: its stages' images and sources, their footprints (live)."""
        from cosmic_horizons_lab.notebook.widgets.sky import Sky

        return Sky(self.lab, list(self), **kwargs)

    def __repr__(self) -> str:
        """A header with the counts per state, then one line per job: what sets it apart, and its state."""
        from cosmic_horizons_lab.notebook.widgets.timeline import differing_labels

        counts: dict[str, int] = {}
        for job in self:
            counts[job.status] = counts.get(job.status, 0) + 1
        states = ", ".join(f"{n} {status}" for status, n in counts.items())
        head = f"<Batch {self.batch_id or ''} of {len(self)} jobs: {states}>".replace("Batch  of", "Batch of")
        names = {job.id: name for name, job in self.stages.items()}
        labels = differing_labels([job.record for job in self])
        lines = [head]
        for job, label in zip(self, labels):
            what = names.get(job.id) or label or ""
            lines.append(f"  {job.id[:8]}  {job.record.get('agent', ''):<20} {job.status:<10} {what}".rstrip())
        return "\n".join(lines)

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
