"""Timeline: a batch or pipeline as one bar per job, queued → end, live.

Bars are coloured by state (the waiting part pale), dependencies drawn as
arrows from a parent's end to its child's start. The bars are rendered from
the batch's :class:`~cosmic_horizons_lab.notebook.jobs.Job` handles, which the
event stream keeps current; the timeline keeps no copy of its own.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

import traitlets

from cosmic_horizons_lab.notebook.widgets.live import LiveWidget
from cosmic_horizons_lab.notebook.widgets.static import CSS, view

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.jobs import Job
    from cosmic_horizons_lab.notebook.lab import Lab


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


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 24 else text[:23] + "…"


def differing_labels(records: Sequence[dict[str, Any]]) -> list[str | None]:
    """Label each job by what sets it apart from the others in its batch.

    In a sweep (weighting natural, uniform, briggs) the value that differs
    tells the bars apart; eight hex digits of an id do not. Parameters that
    are the same everywhere are left out; the agent shows where agents differ.
    None where nothing differs (the bar keeps its agent-and-id label).
    """
    if len(records) < 2:
        return [None] * len(records)
    fields = [{"agent": r.get("agent"), "dataset": r.get("dataset_id"),
               **{str(k): v for k, v in (r.get("params") or {}).items()}} for r in records]
    keys = sorted({k for f in fields for k in f})
    differing = [k for k in keys if len({_short(f.get(k)) for f in fields}) > 1]
    labels: list[str | None] = []
    for f in fields:
        parts = [str(f.get("agent") or "job")] if "agent" in differing else []
        parts += [f"{k}={_short(f.get(k))}" for k in differing if k != "agent"]
        labels.append(" ".join(parts) if parts else None)
    return labels


class Timeline(LiveWidget):
    _esm = view("timeline")
    _css = CSS

    jobs = traitlets.List(help="Bars: id, label, status, queued/start/end (epoch s), depends_on.").tag(sync=True)

    def __init__(self, lab: "Lab", jobs: Sequence["Job"], labels: Sequence[str] | None = None) -> None:
        self._lab = lab
        self._jobs = list(jobs)
        self._labels = {j.id: label for j, label in zip(self._jobs, labels or []) if label}
        super().__init__(pump=lab.pump, **self.render())
        for job in self._jobs:
            job.add_listener(self._on_job_change)
        # The event stream is open before the snapshots are read: no change falls between.
        lab.follow()
        self.invalidate()
        threading.Thread(target=self._load, daemon=True).start()

    def __repr__(self) -> str:
        return f"<Timeline of {len(self._jobs)} jobs>"

    def summary(self) -> list[str]:
        """The counts per state, then one line per bar: its label and state."""
        bars = list(self.jobs)
        counts: dict[str, int] = {}
        for b in bars:
            counts[b["status"]] = counts.get(b["status"], 0) + 1
        states = ", ".join(f"{n} {status}" for status, n in counts.items())
        return [f"Timeline of {len(bars)} jobs{' — ' + states if states else ''}",
                *(f"{b['label']} — {b['status']}" for b in bars)]

    def _load(self) -> None:
        for job in self._jobs:
            try:
                job.refresh()
            except Exception:
                continue

    def _on_job_change(self, _job: "Job") -> None:
        self.invalidate()

    def render(self) -> dict[str, Any]:
        records = [job.record for job in self._jobs]
        differ = differing_labels(records)
        return {"jobs": [bar(record, self._labels.get(job.id) or label)
                         for job, record, label in zip(self._jobs, records, differ)]}
