"""JobProgress: one job's live status, progress bar, metrics and a cancel button.

It is what a :class:`~cosmic_horizons_lab.notebook.lab.Job` displays as. When an image
job completes, a quick-look picture (RA/Dec axes, sources circled) appears in
the panel.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import traitlets

from cosmic_horizons_lab.notebook.widgets.live import TERMINAL, Event, LiveWidget, apply_event, merge_snapshot
from cosmic_horizons_lab.notebook.widgets.static import CSS, view

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.lab import Job

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

    def __init__(self, job: "Job", *, preview: bool = True, **kwargs: Any) -> None:
        self._handle = job
        self._record = dict(job.record)
        self._want_preview = preview
        self._previewed = False
        super().__init__(pump=job.lab.pump, job=view_record(self._record), **kwargs)
        job.lab.feed.add(self)
        # The event stream is open before this snapshot is read: no change falls between.
        threading.Thread(target=self._load, daemon=True).start()

    @property
    def job_id(self) -> str:
        return self._handle.id

    def _load(self) -> None:
        try:
            self.on_snapshot(self._handle.lab._record(self.job_id))
        except Exception as exc:
            self.report_error(exc)

    def on_snapshot(self, record: dict[str, Any]) -> None:
        self._record = merge_snapshot(self._record, record)
        self._publish()

    def on_event(self, event: Event) -> None:
        if event.get("job_id") != self.job_id:
            return
        if apply_event(self._record, event):
            self._publish()

    def _publish(self) -> None:
        self._handle._update_from(self._record)
        self.stage(job=view_record(self._record))
        if self._record.get("status") == "COMPLETED" and self._want_preview and not self._previewed:
            self._previewed = True
            threading.Thread(target=self._make_preview, daemon=True).start()

    def _make_preview(self) -> None:
        try:
            png = self._handle.quicklook_png()
        except Exception:  # a job without an image, or no matplotlib: no picture, no error
            return
        if png:
            self.stage(preview=png, preview_alt=f"quick-look of job {self.job_id}")

    def action_cancel(self, _content: dict[str, Any]) -> None:
        if self._record.get("status") in TERMINAL:
            return
        self.on_snapshot(self._handle.lab._cancel_record(self.job_id))
