"""How a job record moves forward: by a ``job.*`` event, or by a REST snapshot.

This is the one state machine of the notebook runtime. A :class:`~cosmic_horizons_lab.notebook.jobs.Job`
applies each event to its record with it, once; the widgets render from the
``Job``. It lives apart from the widgets so that a kernel without anywidget
still keeps its job handles current.
"""

from __future__ import annotations

from typing import Any

from cosmic_horizons_lab.protocol.states import EVENT_FOR, LIVE, SUBMITTED_EVENT, Status
from cosmic_horizons_lab.protocol.states import TERMINAL as _TERMINAL

Event = dict[str, Any]

TERMINAL = frozenset(s.value for s in _TERMINAL)
#: How far along the lifecycle a status is: the end states share the last rank.
ORDER = {**{s.value: i for i, s in enumerate(LIVE)}, **{s.value: len(LIVE) for s in _TERMINAL}}
TYPE_STATUS = {SUBMITTED_EVENT: Status.QUEUED.value, **{t: s.value for s, t in EVENT_FOR.items()}}

__all__ = ["Event", "ORDER", "TERMINAL", "TYPE_STATUS", "apply_event", "merge_snapshot"]


def apply_event(job: dict[str, Any], event: Event) -> bool:
    """Move a job record forward by one ``job.*`` event (in place).

    Terminal states never change and a status never moves back, so events and
    REST snapshots can be merged in any order. Returns whether it changed.
    """
    etype = str(event.get("type", ""))
    if not etype.startswith("job."):
        return False
    payload = event.get("payload") or {}
    changed = False
    status = payload.get("status") or TYPE_STATUS.get(etype)
    current = job.get("status") or "QUEUED"
    if status:
        status = str(status).upper()
        if current not in TERMINAL and ORDER.get(status, 0) >= ORDER.get(current, 0) and status != current:
            job["status"] = status
            changed = True
            if status == "RUNNING" and not job.get("started_at"):
                job["started_at"] = event.get("ts")
            if status in TERMINAL and not job.get("completed_at"):
                job["completed_at"] = event.get("ts")
    if isinstance(payload.get("progress"), (int, float)) and job.get("status") not in TERMINAL:
        job["progress"] = float(payload["progress"])
        changed = True
    if job.get("status") == "COMPLETED" and job.get("progress") != 1.0:
        job["progress"] = 1.0
        changed = True
    if isinstance(payload.get("metrics"), dict):
        job["metrics"] = {**(job.get("metrics") or {}), **payload["metrics"]}
        changed = True
    for key in ("error", "output_url", "agent", "dataset_id", "batch_id", "result"):
        if payload.get(key) is not None:
            job[key] = payload[key]
            changed = True
    if etype == "job.submitted" and not job.get("created_at"):
        job["created_at"] = event.get("ts")
    return changed


def merge_snapshot(job: dict[str, Any] | None, snapshot: dict[str, Any]) -> dict[str, Any]:
    """A REST record merged into one built from events, never moving it back."""
    if not job:
        return dict(snapshot)
    merged = {**job, **{k: v for k, v in snapshot.items() if v is not None or k not in job}}
    current, fresh = job.get("status") or "QUEUED", snapshot.get("status") or "QUEUED"
    if current in TERMINAL or ORDER.get(current, 0) > ORDER.get(fresh, 0):
        merged["status"] = current
        merged["progress"] = job.get("progress", snapshot.get("progress"))
    return merged
