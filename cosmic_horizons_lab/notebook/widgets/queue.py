"""JobQueue: a live table of the caller's jobs, with cancel buttons.

The table holds up to ``limit`` jobs, newest first. Its state is one list
traitlet of small rows; the update pump bounds how often it is resent, so a
burst of events over a 1,000-job queue costs a few messages, not thousands.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import traitlets

from cosmic_horizons_lab.notebook.widgets.live import Event, LiveWidget, apply_event, merge_snapshot
from cosmic_horizons_lab.notebook.widgets.static import CSS, view

if TYPE_CHECKING:
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
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        super().__init__(pump=lab.pump)
        lab.feed.add(self)
        self.connected = lab.feed.started
        if load:
            threading.Thread(target=self.refresh, daemon=True).start()

    def refresh(self) -> None:
        """Reload the list from the API (events keep it current afterwards)."""
        try:
            records = self._lab._list_records(limit=self._limit, **self._filters)
        except Exception as exc:
            self.report_error(exc)
            return
        self.add_records(records)

    def add_records(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            for record in records:
                self._records[record["id"]] = merge_snapshot(self._records.get(record["id"]), record)
        self._publish(error="")

    def _matches(self, record: dict[str, Any]) -> bool:
        for key in ("agent", "dataset_id", "status", "batch_id"):
            want = self._filters.get(key)
            if want is not None and record.get(key) not in (None, want):
                return False
        return True

    def on_event(self, event: Event) -> None:
        job_id = event.get("job_id")
        if not job_id or not str(event.get("type", "")).startswith("job."):
            return
        fetch = False
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                record = self._records[job_id] = {"id": job_id, "status": "QUEUED"}
                fetch = True
            changed = apply_event(record, event)
        if fetch:
            # Agent and dataset come with the record; the event already gave the status.
            threading.Thread(target=self._fetch, args=(job_id,), daemon=True).start()
        if changed or fetch:
            self._publish()

    def _fetch(self, job_id: str) -> None:
        try:
            record = self._lab._record(job_id)
        except Exception:
            return
        self.add_records([record])

    def _publish(self, **extra: Any) -> None:
        with self._lock:
            records = [r for r in self._records.values() if self._matches(r)]
        records.sort(key=lambda r: (r.get("created_at") or "", r["id"]), reverse=True)
        rows = [{k: r.get(k) for k in ROW_FIELDS} for r in records[: self._limit]]
        self.stage(jobs=rows, connected=self._lab.feed.started, **extra)

    def action_cancel(self, content: dict[str, Any]) -> None:
        job_id = content.get("id")
        if job_id:
            self.add_records([self._lab._cancel_record(job_id)])

    def action_refresh(self, _content: dict[str, Any]) -> None:
        threading.Thread(target=self.refresh, daemon=True).start()
