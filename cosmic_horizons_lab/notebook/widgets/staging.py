"""Staging: a dataset's copy from the archive to a target (scratch), live.

Shows the transfer's state (queued, running, verifying, completed, failed,
cancelled), bytes moved, rate and ETA from the ``staging.*`` events, with a
cancel button.
"""

from __future__ import annotations

import threading
import urllib.parse
from typing import TYPE_CHECKING, Any

import traitlets

from cosmic_horizons_lab.notebook.widgets.live import Event, LiveWidget
from cosmic_horizons_lab.notebook.widgets.static import CSS, view
from cosmic_horizons_lab.notebook.widgets.summary import percent

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.lab import Lab

ENDED = frozenset({"completed", "failed", "cancelled"})


class Staging(LiveWidget):
    _esm = view("staging")
    _css = CSS

    transfer = traitlets.Dict(
        help="The newest transfer of the dataset: dataset_id, target_resource, status, progress (0..1), "
        "bytes_transferred, total_bytes, rate_bytes_per_second, eta_seconds, phase, error."
    ).tag(sync=True)

    def __init__(self, lab: "Lab", dataset_id: str, target_resource: str | None = None, *,
                 start: bool = True, priority: str | None = None, convert: str | None = None,
                 force: bool | None = None) -> None:
        self._lab = lab
        self._doc: dict[str, Any] = {"dataset_id": dataset_id, "target_resource": target_resource,
                                     "status": "not_staged", "progress": 0.0}
        self._lock = threading.Lock()
        super().__init__(pump=lab.pump, transfer=dict(self._doc))
        lab.feed.add(self)
        body = {k: v for k, v in {"dataset_id": dataset_id, "target_resource": target_resource,
                                  "priority": priority, "convert": convert, "force": force}.items() if v is not None}
        # The stream is open before this request: no event of the transfer can fall before it.
        doc = lab.client.request("POST", "jobs/dataset/stage", body) if start else self._status()
        self.on_status(doc)

    def _path(self) -> str:
        path = f"jobs/dataset/{urllib.parse.quote(self._doc['dataset_id'], safe='')}/staging-status"
        target = self._doc.get("target_resource")
        return path + (f"?target_resource={urllib.parse.quote(target)}" if target else "")

    def _status(self) -> dict[str, Any]:
        return self._lab.client.request("GET", self._path())

    def on_status(self, doc: dict[str, Any]) -> None:
        with self._lock:
            same = not doc.get("transfer_id") or self._doc.get("transfer_id") in (None, doc.get("transfer_id"))
            if same or doc.get("status") not in ENDED:
                self._doc.update({k: v for k, v in doc.items() if v is not None or k == "error"})
            snapshot = dict(self._doc)
        self.stage(transfer=snapshot)

    def on_event(self, event: Event) -> None:
        if not str(event.get("type", "")).startswith("staging."):
            return
        p = event.get("payload") or {}
        with self._lock:
            if p.get("dataset_id") != self._doc["dataset_id"]:
                return
            target = self._doc.get("target_resource")
            if target and p.get("target_resource") not in (None, target):
                return
            mine = self._doc.get("transfer_id")
            if mine and p.get("transfer_id") not in (None, mine) and self._doc.get("status") not in ENDED:
                return  # another transfer of the same dataset
            self._doc.update(p)
            if event["type"] == "staging.completed":
                self._doc["progress"] = 1.0
            snapshot = dict(self._doc)
        self.stage(transfer=snapshot)

    def summary(self) -> list[str]:
        """The transfer in one line (dataset, where to, state, progress), and its error if any."""
        t = self.transfer
        where = f" → {t['target_resource']}" if t.get("target_resource") else ""
        lines = [f"Staging {t.get('dataset_id')}{where} — {t.get('status')}, {percent(t.get('progress'))}"]
        if t.get("error"):
            lines.append(f"error: {t['error']}")
        return lines

    @property
    def done(self) -> bool:
        return self._doc.get("status") in ENDED

    def action_cancel(self, _content: dict[str, Any]) -> None:
        self.on_status(self._lab.client.request("DELETE", self._path()))

    def action_refresh(self, _content: dict[str, Any]) -> None:
        self.on_status(self._status())
