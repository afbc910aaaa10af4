"""JobProgress: one job's live status, progress bar, metrics and a cancel button.

It is what a :class:`~cosmic_horizons_lab.notebook.jobs.Job` displays as. It keeps
no record of its own: the ``Job`` is the kernel's one copy of the job (each
event applied to it once); the panel listens to it and renders ``job.record``
when the update pump flushes. When an image job completes, a quick-look
picture (RA/Dec axes, sources circled) appears in the panel.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import traitlets

from cosmic_horizons_lab.notebook.widgets.live import LiveWidget
from cosmic_horizons_lab.notebook.widgets.static import CSS, view

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.jobs import Job

#: The fields of a job record the view shows (a record's params and result stay in the kernel).
FIELDS = (
    "id", "agent", "dataset_id", "status", "progress", "metrics", "error", "priority",
    "created_at", "started_at", "completed_at", "output_url", "batch_id",
)


def view_record(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in FIELDS if k in record}


class JobProgress(LiveWidget):
    _esm = view("progress")
    _css = CSS

    job = traitlets.Dict(help="The job's record as the view shows it (status, progress 0..1, metrics).").tag(sync=True)
    preview = traitlets.Bytes(b"", help="A PNG quick-look of the job's image output, once it completed.").tag(sync=True)
    preview_alt = traitlets.Unicode("").tag(sync=True)
    preview_error = traitlets.Unicode("", help="Why a completed image job shows no picture, in one line.").tag(sync=True)

    def __init__(self, job: "Job", *, preview: bool = True, **kwargs: Any) -> None:
        self._job = job
        self._want_preview = preview
        self._preview_lock = threading.Lock()
        self._previewed = False
        super().__init__(pump=job.lab.pump, job=view_record(job.record), **kwargs)
        job.add_listener(self._on_job_change)
        # The event stream is open before the snapshot is read: no change falls between.
        job.watch()
        self._on_job_change(job)  # anything that changed since the first render, and a finished job's picture
        threading.Thread(target=self._load, daemon=True).start()

    def __repr__(self) -> str:
        return f"<JobProgress of {self._job!r}>"

    @property
    def job_id(self) -> str:
        return self._job.id

    def _load(self) -> None:
        try:
            self._job.refresh()
        except Exception as exc:
            self.report_error(exc)

    def _on_job_change(self, job: "Job") -> None:
        self.invalidate()
        if job.status == "COMPLETED" and self._want_preview:
            with self._preview_lock:
                start, self._previewed = not self._previewed, True
            if start:
                threading.Thread(target=self._make_preview, daemon=True).start()

    def render(self) -> dict[str, Any]:
        return {"job": view_record(self._job.record)}

    def _make_preview(self) -> None:
        try:
            png = self._job.quicklook_png()
        except FileNotFoundError:
            return  # a job without an image has no picture to draw, and nothing to explain
        except Exception as exc:
            self.stage(preview_error=f"no quick-look: {type(exc).__name__}: {exc}".splitlines()[0][:300])
            return
        if png:
            self.stage(preview=png, preview_alt=f"quick-look of job {self.job_id}")

    def action_cancel(self, _content: dict[str, Any]) -> None:
        if not self._job.done:
            self._job.cancel(check=True)
