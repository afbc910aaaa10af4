"""JobQueue: a live table of the caller's jobs, with cancel buttons.

The table holds up to ``limit`` jobs, newest first, as the Lab's
:class:`~cosmic_horizons_lab.notebook.jobs.Job` handles (the same ones a
notebook variable or a progress panel holds: each event is applied once, to
the job). Its state is one list traitlet of small rows, rendered from those
jobs when the update pump flushes: a burst of events over a 1,000-job queue
costs a few renders and messages, not thousands.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import traitlets

from cosmic_horizons_lab.notebook.widgets.live import LiveWidget
from cosmic_horizons_lab.notebook.widgets.static import CSS, view
from cosmic_horizons_lab.notebook.widgets.summary import job_line

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.jobs import Job
    from cosmic_horizons_lab.notebook.lab import Lab

ROW_FIELDS = ("id", "agent", "dataset_id", "status", "progress", "created_at", "started_at",
              "completed_at", "batch_id", "priority", "error")


class JobQueue(LiveWidget):
    _esm = view("queue")
    _css = CSS

    jobs = traitlets.List(help="Rows, newest first: id, agent, dataset_id, status, progress (0..1), times.").tag(sync=True)
    active_only = traitlets.Bool(False, help="Show only jobs not yet finished (set from the view).").tag(sync=True)
    connected = traitlets.Bool(False, help="Whether the kernel's event stream is open.").tag(sync=True)

    def __init__(self, lab: "Lab", *, limit: int = 1000, load: bool = True, **filters: Any) -> None:
        self._lab = lab
        self._limit = limit
        self._filters = {k: v for k, v in filters.items() if v is not None}
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        super().__init__(pump=lab.pump)
        lab.on_new_job(self._new_job)
        lab.follow()
        self.connected = lab.feed.started
        if load:
            threading.Thread(target=self.refresh, daemon=True).start()

    def __repr__(self) -> str:
        """Outside a browser (a terminal, a saved notebook's text), the queue's counts per state."""
        with self._lock:
            jobs = list(self._jobs.values())
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.status] = counts.get(job.status, 0) + 1
        states = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        return f"<JobQueue of {len(jobs)} jobs{': ' + states if states else ''}>"

    #: How many jobs the static form lists (the counts cover all of them).
    SUMMARY_ROWS = 10

    def summary(self) -> list[str]:
        """The counts per state, then the newest jobs as the table shows them."""
        rows = list(self.jobs)
        counts: dict[str, int] = {}
        for row in rows:
            status = str(row.get("status") or "QUEUED")
            counts[status] = counts.get(status, 0) + 1
        states = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        lines = [f"Job queue: {len(rows)} job{'' if len(rows) == 1 else 's'}{' — ' + states if states else ''}"]
        lines += [job_line(row) for row in rows[: self.SUMMARY_ROWS]]
        if len(rows) > self.SUMMARY_ROWS:
            lines.append(f"… and {len(rows) - self.SUMMARY_ROWS} more")
        return lines

    def refresh(self) -> None:
        """Reload the list from the API (events keep it current afterwards)."""
        try:
            jobs = self._lab.recent_jobs(limit=self._limit, **self._filters)
        except Exception as exc:
            self.report_error(exc)
            return
        self.add_jobs(jobs)
        self.stage(error="")

    def add_jobs(self, jobs: list["Job"]) -> None:
        """Show these jobs too (each listened to from now on)."""
        with self._lock:
            new = [job for job in jobs if job.id not in self._jobs]
            self._jobs.update((job.id, job) for job in new)
        for job in new:
            job.add_listener(self._on_job_change)
        self.invalidate()

    def _new_job(self, job: "Job") -> None:
        self.add_jobs([job])
        if not job.record.get("agent"):
            # Heard of from the stream: agent and dataset come with the record (the event
            # already gave the status). A handle made from an API answer has them.
            threading.Thread(target=self._fetch, args=(job,), daemon=True).start()

    @staticmethod
    def _fetch(job: "Job") -> None:
        try:
            job.refresh()
        except Exception:
            pass

    def _on_job_change(self, _job: "Job") -> None:
        self.invalidate()

    def _matches(self, record: dict[str, Any]) -> bool:
        for key in ("agent", "dataset_id", "status", "batch_id"):
            want = self._filters.get(key)
            if want is not None and record.get(key) not in (None, want):
                return False
        return True

    def render(self) -> dict[str, Any]:
        with self._lock:
            records = [job.record for job in self._jobs.values()]
        records = [r for r in records if self._matches(r)]
        records.sort(key=lambda r: (r.get("created_at") or "", r["id"]), reverse=True)
        rows = [{k: r.get(k) for k in ROW_FIELDS} for r in records[: self._limit]]
        return {"jobs": rows, "connected": self._lab.feed.started}

    def action_cancel(self, content: dict[str, Any]) -> None:
        job_id = content.get("id")
        if job_id:
            with self._lock:
                job = self._jobs.get(job_id)
            (job or self._lab.job(job_id)).cancel(check=True)

    def action_refresh(self, _content: dict[str, Any]) -> None:
        threading.Thread(target=self.refresh, daemon=True).start()
