"""The job service the handlers and the app talk to: it owns the lifecycle loop.

The work itself lives beside it: :mod:`.intake` writes submissions, :mod:`.dispatch` starts
queued jobs, :mod:`.reconcile` folds in what the backend and the job directories say, and
:mod:`.lifecycle` is the one way a status changes. This module wires them together, runs
them from one loop so no two ticks overlap, and keeps the reads and cancel, which need all
of them at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from opentelemetry.trace import SpanKind

from cosmic_horizons_lab.backends.base import Backend, BackendUnavailable
from cosmic_horizons_lab.protocol.clock import utcnow
from cosmic_horizons_lab.protocol.states import TERMINAL, Status
from cosmic_horizons_lab.server.api import requests
from cosmic_horizons_lab.server.api.submission import SubmissionValidator
from cosmic_horizons_lab.server.background import stop_task
from cosmic_horizons_lab.server.datasets import DatasetRegistry
from cosmic_horizons_lab.server.errors import Conflict, LabError, NotFound
from cosmic_horizons_lab.server.jobs.dispatch import BackendHealth, Dispatcher
from cosmic_horizons_lab.server.jobs.intake import Intake, SubmitCheck
from cosmic_horizons_lab.server.jobs.lifecycle import Lifecycle, TransitionHook
from cosmic_horizons_lab.server.jobs.reconcile import Reconciler
from cosmic_horizons_lab.server.store.database import Store
from cosmic_horizons_lab.server.store.orm import JobRecord
from cosmic_horizons_lab.server.tracing import Tracing

log = logging.getLogger(__name__)

#: A wake-up waits this long for more wake-ups, so a burst of submissions is one tick.
DEBOUNCE_SECONDS = 0.01
QUEUE_DEBOUNCE_SECONDS = 0.1


class BackendError(LabError):
    status = 503
    code = "backend_unavailable"


@dataclass
class Page:
    items: list[JobRecord]
    total: int
    page: int
    page_size: int


class Orchestrator:
    def __init__(
        self,
        *,
        store: Store,
        backend: Backend,
        validator: SubmissionValidator,
        datasets: DatasetRegistry,
        work_dir: Path,
        server_root: Path,
        server_id: str,
        poll_interval: float = 1.0,
        submit_checks: Sequence[SubmitCheck] = (),
        transition_hooks: Sequence[TransitionHook] = (),
        resolve_dataset: Callable[[str, Any], dict[str, Any]] | None = None,
        sample_interval: float = 1.0,
        tracing: Tracing | None = None,
    ) -> None:
        """``submit_checks``: ``async check(tx, user, submission)`` run inside a submission's
        transaction before its job is added; raising a LabError refuses it (quotas, budgets).
        ``transition_hooks``: ``hook(tx, job, previous_status)`` run inside the transaction of
        every transition, in order (cost charging, then the webhook outbox, so both commit with
        the change). ``resolve_dataset``: ``resolve(user, dataset) -> job.json dataset ref``
        (staging points a job at a fresh staged copy; without it jobs read the archive).
        ``sample_interval``: seconds between a job's own resource samples (its job.json)."""
        self.store = store
        self.backend = backend
        self.poll_interval = poll_interval
        self.health = BackendHealth(poll_interval)
        #: the job spans (server/tracing.py); dispatch and reconciliation reach it through the lifecycle
        self.tracing = tracing or Tracing.disabled()
        self.lifecycle = lifecycle = Lifecycle(list(transition_hooks), self.tracing)
        self.intake = Intake(
            store=store, validator=validator, checks=list(submit_checks), backend_name=backend.name,
            server_id=server_id, wake=self.wake,
        )
        self.dispatcher = Dispatcher(
            store=store, backend=backend, datasets=datasets, lifecycle=lifecycle, health=self.health,
            work_dir=work_dir, server_root=server_root, server_id=server_id,
            resolve_dataset=resolve_dataset, sample_interval=sample_interval,
        )
        self.reconciler = Reconciler(
            store=store, backend=backend, lifecycle=lifecycle, health=self.health, work_dir=work_dir,
            server_id=server_id,
        )
        self._wake = asyncio.Event()
        self._reconcile_due = False
        # A backend with its own queue (Slurm) gains from bigger packs more than it loses in
        # milliseconds; a slot backend starts work at once.
        self._debounce = DEBOUNCE_SECONDS if backend.free_slots(0) is not None else QUEUE_DEBOUNCE_SECONDS
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._terminal_waiters: dict[str, list[asyncio.Future]] = {}
        self.last_tick: float | None = None

    # -- what the app reads and sets ------------------------------------------------------
    @property
    def backend_error(self) -> str | None:
        """Why the backend is unreachable (for the health endpoint); None when it answers."""
        return self.health.error

    @property
    def _backend_retry_at(self) -> float:
        # Tests hold dispatch by pushing this to infinity; it lives in the shared health.
        return self.health.retry_at

    @_backend_retry_at.setter
    def _backend_retry_at(self, when: float) -> None:
        self.health.retry_at = when

    # -- start / stop ----------------------------------------------------------------
    async def start(self) -> None:
        """Re-attach to the jobs a previous server left running, then start the loop."""
        await self.reconciler.adopt()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        await stop_task(self._task)

    def wake(self, reconcile: bool = False) -> None:
        """Run the loop now: to dispatch (a submission), or also to reconcile (a job ended, a cancel)."""
        self._reconcile_due = self._reconcile_due or reconcile
        self._wake.set()

    def on_published(self, events: list[dict[str, Any]]) -> None:
        """Called by the store after each commit: resolves waiters on terminal events."""
        for ev in events:
            if ev["type"] in ("job.completed", "job.failed", "job.cancelled"):
                for fut in self._terminal_waiters.pop(ev["job_id"], []):
                    if not fut.done():
                        fut.set_result(ev)

    async def _loop(self) -> None:
        # Fixed cadence: a tick starts every poll_interval however long the last one took, so a
        # backend state change is seen within one interval (plus the tick itself), not two.
        next_tick = time.monotonic()
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, next_tick - time.monotonic()))
                await asyncio.sleep(self._debounce)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            reconcile = self._reconcile_due or now >= next_tick
            if now >= next_tick:
                next_tick = max(next_tick + self.poll_interval, now)
            self._reconcile_due = False
            try:
                await self.tick(reconcile)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one bad tick
                log.exception("orchestrator tick failed")

    async def tick(self, reconcile: bool = True) -> None:
        """Reconcile (on the poll cadence, or when told something ended), then dispatch.

        A wake from a submission only dispatches: reconciling every active job on each of
        hundreds of submissions a second would starve the submissions themselves.
        """
        if reconcile:
            await self.reconciler.reconcile()
            # on SQLite the store's calls do not yield, so a tick is one long step of the event
            # loop: let the requests and the fan-out that waited meanwhile in between the two
            await asyncio.sleep(0)
        await self.dispatcher.dispatch()
        self.last_tick = time.time()

    # -- reads ------------------------------------------------------------------------
    async def get_job(self, user: str, job_id: str) -> JobRecord:
        async with self.store.read() as session:
            job = await session.get(JobRecord, job_id)
        if job is None or job.user != user:
            # Another user's job is as unknown as a job that does not exist.
            raise NotFound(f"no job {job_id!r}", field="id")
        return job

    async def list_jobs(self, user: str, query: dict[str, str]) -> Page:
        """History and search: the user's jobs, newest first, filtered and paginated."""
        q = requests.job_query(query)
        conds = [JobRecord.user == user, *(getattr(JobRecord, name) == value for name, value in q.equals.items())]
        if q.statuses is not None:
            conds.append(JobRecord.status.in_(q.statuses))
        conds += q.created
        async with self.store.read() as session:
            total = await session.scalar(sa.select(sa.func.count()).select_from(JobRecord).where(*conds)) or 0
            items = (
                await session.scalars(
                    sa.select(JobRecord)
                    .where(*conds)
                    .order_by(JobRecord.created_at.desc(), JobRecord.id.desc())
                    .offset((q.page - 1) * q.page_size)
                    .limit(q.page_size)
                )
            ).all()
        return Page(list(items), total, q.page, q.page_size)

    # -- cancel -------------------------------------------------------------------------
    async def cancel(self, user: str, job_id: str, wait: float = 3.0) -> JobRecord:
        """Cancel a job; 409 when it already ended. Waits briefly for the backend to confirm.

        A QUEUED job is ours alone and ends here; one the backend holds is only asked to stop,
        and reconciliation records the end when the backend reports it.
        """
        job = await self.get_job(user, job_id)
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status}", field="status", status_now=job.status)
        if job.status == Status.QUEUED:
            async with self.store.write() as tx:
                job = await tx.session.get(JobRecord, job_id, with_for_update=not self.store.is_sqlite)
                if job.status == Status.QUEUED:
                    self.lifecycle.transition(tx, job, Status.CANCELLED, reason="cancelled", payload={"by": user})
                    return job
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status}", field="status", status_now=job.status)
        fut = asyncio.get_running_loop().create_future()
        self._terminal_waiters.setdefault(job_id, []).append(fut)
        try:
            with self.tracing.job_span("backend.cancel", job, kind=SpanKind.CLIENT, attributes={
                    "cosmic.backend": self.backend.name, "cosmic.backend_job_id": job.backend_job_id or ""}):
                await self.backend.cancel(job.backend_job_id)
        except BackendUnavailable as exc:
            raise BackendError(f"the backend cannot cancel now: {exc}") from None
        self.reconciler.cancel_requested_by[job_id] = user
        async with self.store.write() as tx:
            current = await tx.session.get(JobRecord, job_id)
            if current.status not in TERMINAL:
                current.reason = "cancel_requested"
                current.updated_at = utcnow()
        self.wake(reconcile=True)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=wait)
        except asyncio.TimeoutError:
            pass
        return await self.get_job(user, job_id)


__all__ = ["Orchestrator", "Page", "BackendError"]
