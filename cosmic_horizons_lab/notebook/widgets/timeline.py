"""Timeline: a batch or pipeline as one bar per job, queued → end, live.

Bars are coloured by state (the waiting part pale), dependencies drawn as
arrows from a parent's end to its child's start.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

import traitlets

from cosmic_horizons_lab.notebook.widgets.live import Event, LiveWidget, apply_event, merge_snapshot
from cosmic_horizons_lab.notebook.widgets.static import CSS, view

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.lab import Job, Lab


def _epoch(ts: Any) -> float | None:
    if ts in (None, ""):
        return None
    if isinstance(ts, (int, float)):
        return float(ts)
    return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()


def bar(record: dict[str, Any], label: str | None = None) -> dict[str, Any]:
    """One job's bar: times as epoch seconds (what the view draws)."""
    deps = record.get("depends_on") or []
    if isinstance(deps, str):
        deps = [deps]
    return {
        "id": record["id"],
        "label": label or f"{record.get('agent') or 'job'} {str(record['id'])[:8]}",
        "status": record.get("status") or "QUEUED",
        "queued": _epoch(record.get("created_at")),
        "start": _epoch(record.get("started_at")),
        "end": _epoch(record.get("completed_at")),
        "depends_on": list(deps),
    }


class Timeline(LiveWidget):
    _esm = view("timeline")
    _css = CSS

    jobs = traitlets.List(help="Bars: id, label, status, queued/start/end (epoch s), depends_on.").tag(sync=True)

    def __init__(self, lab: "Lab", jobs: Sequence["Job"], labels: Sequence[str] | None = None) -> None:
        self._lab = lab
        self._order = [j.id for j in jobs]
        self._labels = {i: label for i, label in zip(self._order, labels or []) if label}
        self._records = {j.id: dict(j.record) for j in jobs}
        self._lock = threading.Lock()
        super().__init__(pump=lab.pump)
        lab.feed.add(self)
        self._publish()
        threading.Thread(target=self._load, daemon=True).start()

    def _load(self) -> None:
        for job_id in self._order:
            try:
                record = self._lab._record(job_id)
            except Exception:
                continue
            with self._lock:
                self._records[job_id] = merge_snapshot(self._records.get(job_id), record)
        self._publish()

    def on_event(self, event: Event) -> None:
        job_id = event.get("job_id")
        if job_id not in self._records:
            return
        with self._lock:
            changed = apply_event(self._records[job_id], event)
        if changed:
            self._publish()

    def _publish(self) -> None:
        with self._lock:
            bars = [bar(self._records[i], self._labels.get(i)) for i in self._order]
        self.stage(jobs=bars)
