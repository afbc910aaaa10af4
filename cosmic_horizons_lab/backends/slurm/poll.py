"""Polling: the states of many jobs from one ``squeue`` and at most one ``sacct`` call.

The cost of a poll must not grow with the number of jobs or callers, or a busy
server would flood the controller: one ``squeue --json`` call answers for every
active job, and is made at most once per ``min_poll_interval`` (more frequent polls
read the last snapshot); while Slurm is unreachable, calls back off exponentially.
Accounting (``sacct``) is asked only about jobs that have left the queue or just
ended there, because only it knows their exit code and who cancelled them.

A poll never reports a job lost while it cannot know: during an outage it raises
:class:`BackendUnavailable` (the caller keeps its states), and a job missing from
both squeue and sacct is lost only after ``lost_grace_seconds``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cosmic_horizons_lab.backends.base import BackendJobState, BackendUnavailable
from cosmic_horizons_lab.backends.slurm.commands import SlurmCommandError, SlurmCommands
from cosmic_horizons_lab.backends.slurm.parsing import QueueEntry, QueueSnapshot, sacct_lookup
from cosmic_horizons_lab.backends.slurm.states import TERMINAL, state_from_queue, state_from_sacct
from cosmic_horizons_lab.backends.slurm.tracking import JobTable

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cosmic_horizons_lab.backends.slurm.backend import SlurmBackend

#: Fields of a queue entry that accounting may not have yet when it records the end.
_QUEUE_DETAIL_KEPT = ("user", "partition", "nodes", "dependency")


@dataclass
class _Unsettled:
    """Jobs the queue could not settle on its own."""

    #: to look up in accounting (they left the queue, or just ended there)
    to_sacct: list[str] = field(default_factory=list)
    #: the ended states the queue showed, for those of ``to_sacct`` it still lists
    from_queue: dict[str, BackendJobState] = field(default_factory=dict)
    #: pending with DependencyNeverSatisfied: already reported, to scancel
    unsatisfiable: list[str] = field(default_factory=list)


class Poller:
    """The queue snapshots (rate limit, backoff) and the steps of one poll."""

    def __init__(self, settings: SlurmBackend, commands: SlurmCommands, jobs: JobTable) -> None:
        self._s = settings
        self._commands = commands
        self._jobs = jobs
        self._snapshot: QueueSnapshot | None = None
        self._snapshot_lock = asyncio.Lock()
        self._backoff_until = 0.0
        self._backoff = 0.0
        #: why the last squeue failed; empty since it last answered
        self.last_error = ""

    # ------------------------------------------------------------------ the queue

    async def snapshot(self) -> QueueSnapshot:
        """The queue, at most ``min_poll_interval`` old; raises BackendUnavailable while
        Slurm is down (without even asking it during the backoff)."""
        async with self._snapshot_lock:
            now = time.monotonic()
            snap = self._snapshot
            if snap is not None and now - snap.taken_at < self._s.min_poll_interval:
                return snap
            if now < self._backoff_until:
                raise BackendUnavailable(
                    f"Slurm unreachable ({self.last_error}); next try in {self._backoff_until - now:.0f}s"
                )
            taken_at = time.monotonic()
            try:
                entries = await self._commands.squeue()
            except (BackendUnavailable, SlurmCommandError) as exc:
                self._back_off(str(exc))
                if isinstance(exc, BackendUnavailable):
                    raise
                raise BackendUnavailable(str(exc)) from exc
            self._backoff = 0.0
            self._backoff_until = 0.0
            self.last_error = ""
            self._snapshot = QueueSnapshot(entries, taken_at)
            return self._snapshot

    def _back_off(self, error: str) -> None:
        s = self._s
        self._backoff = min(s.poll_backoff_max, self._backoff * 2 if self._backoff else s.poll_backoff_initial)
        self._backoff_until = time.monotonic() + self._backoff
        self.last_error = error

    # ------------------------------------------------------------------ one poll

    async def poll(self, backend_ids: Iterable[str]) -> dict[str, BackendJobState]:
        """See :meth:`SlurmBackend.poll`."""
        result, active = self._split_cached(backend_ids)
        if not active:
            return result
        snap = await self.snapshot()
        unsettled = self._read_queue(snap, active, result)
        if unsettled.unsatisfiable and self._s.cancel_unsatisfiable:
            await self._commands.scancel_quietly(unsettled.unsatisfiable)
        if unsettled.to_sacct:
            await self._read_accounting(unsettled.to_sacct, unsettled.from_queue, result)
        return result

    def _split_cached(self, backend_ids: Iterable[str]) -> tuple[dict[str, BackendJobState], list[str]]:
        """(the ended jobs' cached states, the ids still to ask Slurm about)."""
        result: dict[str, BackendJobState] = {}
        active: list[str] = []
        for bid in dict.fromkeys(backend_ids):
            cached = self._jobs.terminal.get(bid)
            if cached is not None:
                result[bid] = cached
            else:
                active.append(bid)
        return result, active

    def _read_queue(
        self, snap: QueueSnapshot, active: list[str], result: dict[str, BackendJobState]
    ) -> _Unsettled:
        """Settle from the queue what it can (into ``result``); the rest needs accounting."""
        jobs = self._jobs
        out = _Unsettled()
        for bid in active:
            e = snap.lookup(bid)
            if e is None:
                if jobs.submitted_at.get(bid, -1.0) >= snap.taken_at:
                    # submitted after the snapshot was taken: it is queued, we just did not look yet
                    result[bid] = BackendJobState(status="QUEUING", detail={"source": "submitted"})
                else:
                    out.to_sacct.append(bid)
                continue
            state = self._from_queue(bid, e)
            if state.status in TERMINAL:
                if state.reason == "dependency_failed" and e.states[:1] == ["PENDING"]:
                    out.unsatisfiable.append(bid)
                    jobs.finish(bid, state, result)
                else:
                    # ended: accounting knows the exit code and who cancelled it
                    out.from_queue[bid] = state
                    out.to_sacct.append(bid)
            else:
                jobs.missing_since.pop(bid, None)
                jobs.last[bid] = state
                result[bid] = state
        return out

    async def _read_accounting(
        self, ids: list[str], from_queue: dict[str, BackendJobState], result: dict[str, BackendJobState]
    ) -> None:
        """Settle the jobs the queue could not, from one sacct call and what we remember."""
        jobs = self._jobs
        rows = await self._commands.sacct(ids)
        now = time.monotonic()
        for bid in ids:
            row = sacct_lookup(rows, bid) if rows else None
            queued = from_queue.get(bid)
            if queued is None and bid in jobs.awaiting_accounting:
                queued = jobs.awaiting_accounting[bid][1]  # it has left the queue since
            if row is not None:
                self._settle_by_record(bid, row, queued, result)
            elif queued is not None:
                self._settle_by_queue(bid, queued, now, result)
            elif rows is None:
                # accounting unreachable: say what we last knew, declare nothing lost
                result[bid] = jobs.last_known(bid)
            elif bid in jobs.cancelled_pending:
                # A pending array element that is cancelled vanishes without a trace
                # (no squeue entry, no accounting record): we asked, it is gone.
                gone = BackendJobState(
                    status="CANCELLED",
                    reason="cancelled",
                    detail={"cancel_requested": True, "source": "absence",
                            "message": "cancelled before it started; Slurm kept no record"},
                )  # fmt: skip
                jobs.finish(bid, gone, result)
            else:
                self._settle_missing(bid, now, result)

    def _settle_by_record(
        self, bid: str, row: dict[str, str], queued: BackendJobState | None, result: dict[str, BackendJobState]
    ) -> None:
        """Accounting has the job; the queue's word wins where accounting lags behind it."""
        jobs = self._jobs
        state = self._from_sacct(bid, row)
        if queued is not None and state.status not in TERMINAL:
            state = queued  # accounting has not caught up with the controller yet
        elif queued is not None:
            # accounting may lag on some fields: keep what the queue said
            if queued.reason == "dependency_failed" and state.status == "CANCELLED":
                state.reason = "dependency_failed"
                state.detail["slurm_reason"] = queued.detail.get("slurm_reason")
                jobs.decorate(bid, state)
            for key, value in queued.detail.items():
                if key in _QUEUE_DETAIL_KEPT:
                    state.detail[key] = value
        if state.status in TERMINAL:
            jobs.finish(bid, state, result)
        else:
            jobs.last[bid] = state
            jobs.missing_since.pop(bid, None)
            result[bid] = state

    def _settle_by_queue(
        self, bid: str, queued: BackendJobState, now: float, result: dict[str, BackendJobState]
    ) -> None:
        """The queue saw the job end, accounting has no record (yet)."""
        jobs = self._jobs
        since, _ = jobs.awaiting_accounting.setdefault(bid, (now, queued))
        if (queued.status == "CANCELLED" and self._commands.accounting == "sacct"
                and now - since < self._s.accounting_grace_seconds):  # fmt: skip
            # slurmdbd has not recorded it yet; only it knows who cancelled
            result[bid] = jobs.last_known(bid)
        else:
            jobs.finish(bid, queued, result)

    def _settle_missing(self, bid: str, now: float, result: dict[str, BackendJobState]) -> None:
        """In neither squeue nor sacct: lost, once accounting had ``lost_grace_seconds`` to
        catch up with the controller."""
        jobs = self._jobs
        since = jobs.missing_since.setdefault(bid, now)
        if now - since >= self._s.lost_grace_seconds:
            lost = BackendJobState(
                status="FAILED",
                reason="lost",
                detail={
                    "message": "the job is in neither squeue nor sacct",
                    "last_known": jobs.last[bid].status if bid in jobs.last else None,
                },
            )
            jobs.finish(bid, lost, result)
        else:
            # still within the grace: what we last knew
            result[bid] = jobs.last_known(bid)

    def _from_queue(self, bid: str, e: QueueEntry) -> BackendJobState:
        return self._jobs.decorate(bid, state_from_queue(e))

    def _from_sacct(self, bid: str, row: dict[str, str]) -> BackendJobState:
        return self._jobs.decorate(bid, state_from_sacct(row))
