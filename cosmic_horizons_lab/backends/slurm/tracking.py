"""What the backend remembers of each job between polls.

Slurm alone cannot say everything the orchestrator needs: a job submitted a moment
ago is not in the last queue snapshot yet; a pending array element that is
cancelled leaves no trace at all; a job Slurm killed for memory without cgroups
reads FAILED, and only its log says why; a job missing from both squeue and sacct
is lost only once accounting had time to catch up. So the backend keeps, per job,
what it did and saw, and drops it when the job ends (terminal states are kept in a
bounded cache instead, and never asked of Slurm again).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cosmic_horizons_lab.backends.base import BackendJobState, LaunchSpec
from cosmic_horizons_lab.backends.slurm.states import DEPENDENCY_NEVER

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cosmic_horizons_lab.backends.slurm.backend import SlurmBackend

#: What slurmstepd writes into the job's output when OverMemoryKill (no cgroups) kills it.
_OOM_MARKERS = ("exceeded job memory limit", "oom-kill", "oom_kill", "out of memory")


class JobTable:
    """Per-job memory of one backend, by backend id (``1234`` or ``1234_5``)."""

    def __init__(self, settings: SlurmBackend) -> None:
        self._s = settings
        #: ended jobs, oldest first (at most ``terminal_cache_size``)
        self.terminal: dict[str, BackendJobState] = {}
        #: the last state reported of a job still active
        self.last: dict[str, BackendJobState] = {}
        #: since when a job is in neither squeue nor sacct
        self.missing_since: dict[str, float] = {}
        self.submitted_at: dict[str, float] = {}
        self.job_dirs: dict[str, Path] = {}
        self.after_ok: dict[str, list[str]] = {}
        self.cancel_requested: dict[str, float] = {}
        #: cancelled while pending: their disappearance means "cancelled", not "lost"
        self.cancelled_pending: set[str] = set()
        #: queue said CANCELLED, accounting has no record yet: (first seen, the queue's state)
        self.awaiting_accounting: dict[str, tuple[float, BackendJobState]] = {}

    def remember(self, backend_id: str, spec: LaunchSpec) -> None:
        """A job just submitted."""
        self.submitted_at[backend_id] = time.monotonic()
        self.job_dirs[backend_id] = Path(spec.job_dir)
        if spec.after_ok:
            self.after_ok[backend_id] = list(spec.after_ok)

    def adopt(self, backend_id: str, spec: LaunchSpec) -> None:
        """A job submitted before a restart: only what poll() reads locally."""
        self.job_dirs[backend_id] = Path(spec.job_dir)
        if spec.after_ok:
            self.after_ok[backend_id] = list(spec.after_ok)

    def finish(self, bid: str, state: BackendJobState, result: dict[str, BackendJobState]) -> None:
        """Record a terminal state (into ``result`` too) and forget the rest of the job."""
        self.terminal[bid] = state
        while len(self.terminal) > max(1, self._s.terminal_cache_size):
            self.terminal.pop(next(iter(self.terminal)))  # the oldest: its caller stored it long ago
        result[bid] = state
        for table in (self.last, self.missing_since, self.submitted_at, self.job_dirs,
                      self.after_ok, self.cancel_requested, self.awaiting_accounting):  # fmt: skip
            table.pop(bid, None)
        self.cancelled_pending.discard(bid)

    def forget(self, backend_ids: Iterable[str]) -> None:
        """Drop cached terminal states the caller has stored (memory stays bounded)."""
        for bid in backend_ids:
            self.terminal.pop(bid, None)
            self.job_dirs.pop(bid, None)
            self.after_ok.pop(bid, None)
            self.cancel_requested.pop(bid, None)
            self.awaiting_accounting.pop(bid, None)
            self.cancelled_pending.discard(bid)

    def last_known(self, bid: str) -> BackendJobState:
        """What we last reported, never "unknown" (which a caller may take for lost)."""
        return self.last.get(bid) or BackendJobState(status="QUEUING", detail={"source": "unconfirmed"})

    def decorate(self, backend_id: str, state: BackendJobState) -> BackendJobState:
        """What the orchestrator needs beyond the state: parents, OOM seen in the log."""
        if backend_id in self.after_ok:
            state.detail["after_ok"] = list(self.after_ok[backend_id])
        if state.reason == "dependency_failed":
            state.detail.setdefault("slurm_reason", DEPENDENCY_NEVER)
            state.detail["message"] = "a parent job did not complete successfully; this job never ran"
        if backend_id in self.cancel_requested and state.status == "CANCELLED":
            state.detail["cancel_requested"] = True
        if state.status == "FAILED" and state.reason not in ("timeout", "out_of_memory"):
            # Without cgroups Slurm's OverMemoryKill ends a job FAILED (signal 9), not
            # OUT_OF_MEMORY; slurmstepd says why in the job's output.
            if self._log_says_oom(backend_id):
                state.detail["slurm_reason_reported"] = state.reason
                state.reason = "out_of_memory"
        return state

    def _log_says_oom(self, backend_id: str) -> bool:
        job_dir = self.job_dirs.get(backend_id)
        if job_dir is None:
            return False
        try:
            with open(job_dir / "stdout.log", "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                tail = fh.read().decode(errors="replace").lower()
        except OSError:
            return False
        return any(m in tail for m in _OOM_MARKERS)
