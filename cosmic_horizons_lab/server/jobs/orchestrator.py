"""The orchestrator: submissions, the lifecycle loop, dispatch, reconciliation.

It is the service the handlers and tests call. Every status change goes
through :meth:`Orchestrator._transition` inside a store transaction, so the
change and its event commit together and are published in order. A loop
(woken by submissions and job exits, and every ``poll_interval``) tails the
job directories, polls the backend for all active jobs in one call, applies
what changed, then starts queued jobs by priority, batch limit, dependencies
and free slots.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.protocol import jobdir
from cosmic_horizons_lab.backends.base import Backend, BackendJobState, BackendUnavailable, LaunchSpec
from cosmic_horizons_lab.protocol.clock import parse_iso, utcnow
from cosmic_horizons_lab.server.datasets import DatasetRegistry
from cosmic_horizons_lab.server.errors import BadRequest, Conflict, LabError, NotFound, ValidationFailed
from cosmic_horizons_lab.server.api.filters import created_between
from cosmic_horizons_lab.protocol.states import ACTIVE, EVENT_FOR, TERMINAL, Status, can_transition
from cosmic_horizons_lab.server.store.orm import Batch, Job, Run
from cosmic_horizons_lab.server.store.database import Store, Tx
from cosmic_horizons_lab.server.api.submission import Submission, SubmissionValidator

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 200
MAX_BATCH = 1000
#: A wake-up waits this long for more wake-ups, so a burst of submissions is one tick.
DEBOUNCE_SECONDS = 0.01
QUEUE_DEBOUNCE_SECONDS = 0.1
#: Submissions in flight at once to a backend that queues jobs itself (Slurm).
SUBMIT_CONCURRENCY = 8


class BackendError(LabError):
    status = 503
    code = "backend_unavailable"


@dataclass
class Page:
    items: list[Job]
    total: int
    page: int
    page_size: int


def _new_id() -> str:
    return uuid.uuid4().hex


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
    ) -> None:
        self.store = store
        self.backend = backend
        self.validator = validator
        self.datasets = datasets
        self.work_dir = Path(work_dir)
        self.server_root = Path(server_root)
        self.server_id = server_id
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._reconcile_due = False
        # A backend with its own queue (Slurm) gains from bigger packs more than it loses in
        # milliseconds; a slot backend starts work at once.
        self._debounce = DEBOUNCE_SECONDS if backend.free_slots(0) is not None else QUEUE_DEBOUNCE_SECONDS
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._terminal_waiters: dict[str, list[asyncio.Future]] = {}
        # who asked to cancel a running job, for its CANCELLED event (the backend may not know)
        self._cancel_requested_by: dict[str, str] = {}
        self._pending: list[tuple[str, Submission, str | None, str | None, asyncio.Future]] = []
        #: ``async check(tx, user, submission)`` run inside the submission's transaction, before
        #: the job is added; raising a LabError refuses that submission (quotas hook in here).
        self.submit_checks: list[Callable[[Tx, str, Submission], Awaitable[None]]] = []
        #: ``hook(tx, job, previous_status)`` run inside the transaction of every transition
        #: (cost charging and webhook outbox rows hook in here, so they commit with the change).
        self.transition_hooks: list[Callable[[Tx, Job, str], None]] = []
        #: ``resolve(user, dataset) -> job.json dataset ref``: staging points jobs at a fresh
        #: staged copy; without it jobs read the archive.
        self.resolve_dataset: Callable[[str, Any], dict[str, Any]] | None = None
        self._writer: asyncio.Task | None = None
        self._backend_retry_at = 0.0
        self._backend_backoff = 0.0
        self.backend_error: str | None = None
        self.last_tick: float | None = None

    # -- start / stop ----------------------------------------------------------------
    async def start(self) -> None:
        """Re-attach to the jobs a previous server left running, then start the loop."""
        async with self.store.read() as session:
            rows = (
                await session.scalars(
                    sa.select(Job).where(Job.server_id == self.server_id, Job.status.in_(list(ACTIVE)))
                )
            ).all()
        for job in rows:
            if job.backend_job_id:
                await self.backend.adopt(job.backend_job_id, self._spec(job))
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

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
            await self.reconcile()
        await self.dispatch()
        self.last_tick = time.time()

    # -- submissions --------------------------------------------------------------------
    async def submit(
        self,
        user: str,
        body: Any,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> tuple[Job, bool]:
        """Validate and queue one job; returns (job, created). Same key, same user → the first job.

        Concurrent submissions are written together, one transaction for all
        that arrived while the previous one committed (group commit): that is
        what lets a two-core server take hundreds of submissions a second.
        """
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
            raise BadRequest("Idempotency-Key must be 1 to 255 characters", field="Idempotency-Key")
        sub = self.validator.validate(body)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((user, sub, idempotency_key, correlation_id, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_submissions())
        return await fut

    async def _write_submissions(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            outcomes: list[tuple[asyncio.Future, Any, bool]] = []
            try:
                async with self.store.write() as tx:
                    keys = {(u, k) for u, _, k, _, _ in group if k}
                    known: dict[tuple[str, str], Job] = {}
                    if keys:
                        rows = await tx.session.scalars(
                            sa.select(Job).where(Job.idempotency_key.in_({k for _, k in keys}))
                        )
                        known = {(j.user, j.idempotency_key): j for j in rows if (j.user, j.idempotency_key) in keys}
                    for user, sub, key, cid, fut in group:
                        if key and (user, key) in known:
                            outcomes.append((fut, known[(user, key)], False))
                            continue
                        try:
                            await self._check_parents(tx, user, sub.depends_on, "depends_on")
                            for check in self.submit_checks:
                                await check(tx, user, sub)
                        except LabError as exc:
                            outcomes.append((fut, exc, False))
                            continue
                        job = self._add_job(tx, user, sub, correlation_id=cid, idempotency_key=key)
                        if key:
                            known[(user, key)] = job
                        outcomes.append((fut, job, True))
            except Exception as exc:
                for *_, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for fut, value, created in outcomes:
                if fut.done():
                    continue
                if isinstance(value, BaseException):
                    fut.set_exception(value)
                else:
                    fut.set_result((value, created))
            self.wake()

    async def submit_batch(self, user: str, body: Any, *, correlation_id: str | None = None) -> tuple[Batch, list[Job]]:
        """Queue many jobs at once, all or none; at most ``parallelLimit`` of them run at once."""
        items, limit = _envelope(body, "jobs")
        subs = [self.validator.validate(item, prefix=f"jobs[{i}].") for i, item in enumerate(items)]
        async with self.store.write() as tx:
            for i, sub in enumerate(subs):
                await self._check_parents(tx, user, sub.depends_on, f"jobs[{i}].depends_on")
                for check in self.submit_checks:
                    await check(tx, user, sub)
            batch = Batch(id=_new_id(), user=user, parallel_limit=limit, kind="batch", created_at=utcnow())
            tx.session.add(batch)
            jobs = [self._add_job(tx, user, sub, correlation_id=correlation_id, batch=batch) for sub in subs]
        self.wake()
        return batch, jobs

    async def submit_pipeline(self, user: str, body: Any, *, correlation_id: str | None = None) -> tuple[Batch, dict[str, Job]]:
        """Queue stages that depend on each other by name; each takes its parents' outputs.

        Refused whole (400) when a stage names an unknown parent or the stages form a cycle.
        """
        stages, limit = _envelope(body, "stages")
        names: list[str] = []
        for i, stage in enumerate(stages):
            name = stage.get("name") if isinstance(stage, dict) else None
            if not isinstance(name, str) or not name:
                raise ValidationFailed("every stage needs a 'name' its children refer to", field=f"stages[{i}].name")
            if name in names:
                raise BadRequest(f"stage name {name!r} is used twice", field=f"stages[{i}].name")
            names.append(name)
        subs = [
            self.validator.validate(stage, prefix=f"stages[{i}].", extra_fields=frozenset({"name"}))
            for i, stage in enumerate(stages)
        ]
        order = _topological_order(names, [s.depends_on for s in subs])
        async with self.store.write() as tx:
            batch = Batch(id=_new_id(), user=user, parallel_limit=limit, kind="pipeline", created_at=utcnow())
            tx.session.add(batch)
            ids = {name: _new_id() for name in names}
            jobs: dict[str, Job] = {}
            for i in order:
                sub = subs[i]
                parents = [ids.get(p, p) for p in sub.depends_on]
                outside = [p for p in sub.depends_on if p not in ids]
                await self._check_parents(tx, user, outside, f"stages[{i}].depends_on")
                for check in self.submit_checks:
                    await check(tx, user, sub)
                sub.depends_on = parents
                jobs[names[i]] = self._add_job(
                    tx, user, sub, correlation_id=correlation_id, batch=batch, job_id=ids[names[i]]
                )
        self.wake()
        return batch, jobs

    async def _check_parents(self, tx: Tx, user: str, parents: list[str], field: str) -> None:
        if not parents:
            return
        found = set(
            (await tx.session.scalars(sa.select(Job.id).where(Job.user == user, Job.id.in_(parents)))).all()
        )
        missing = [p for p in parents if p not in found]
        if missing:
            raise BadRequest(f"unknown parent job {missing[0]!r}", field=field)

    def _add_job(
        self,
        tx: Tx,
        user: str,
        sub: Submission,
        *,
        correlation_id: str | None,
        idempotency_key: str | None = None,
        batch: Batch | None = None,
        job_id: str | None = None,
    ) -> Job:
        now = utcnow()
        job = Job(
            id=job_id or _new_id(),
            user=user,
            agent=sub.agent,
            dataset_id=sub.dataset_id,
            status=Status.QUEUED.value,
            progress=0.0,
            priority=sub.priority,
            params=sub.params,
            metrics={},
            notes=sub.notes,
            webhook_url=sub.webhook_url,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id or uuid.uuid4().hex,
            batch_id=batch.id if batch else None,
            depends_on=sub.depends_on,
            backend=self.backend.name,
            server_id=self.server_id,
            gpu_count=sub.gpu_count,
            max_runtime_seconds=sub.max_runtime_seconds,
            retries=sub.retries,
            attempts=0,
            created_at=now,
            updated_at=now,
        )
        tx.session.add(job)
        tx.emit(
            "job.submitted",
            user=user,
            job=job,
            payload={
                "status": job.status,
                "agent": job.agent,
                "dataset_id": job.dataset_id,
                "gpu_count": job.gpu_count,
                "priority": job.priority,
                "batch_id": job.batch_id,
                "depends_on": job.depends_on,
            },
        )
        return job

    # -- reads ------------------------------------------------------------------------
    async def get_job(self, user: str, job_id: str) -> Job:
        async with self.store.read() as session:
            job = await session.get(Job, job_id)
        if job is None or job.user != user:
            # Another user's job is as unknown as a job that does not exist.
            raise NotFound(f"no job {job_id!r}", field="id")
        return job

    async def list_jobs(self, user: str, query: dict[str, str]) -> Page:
        """History and search: the user's jobs, newest first, filtered and paginated."""
        page, page_size = _page_args(query)
        conds = [Job.user == user]
        if query.get("agent"):
            conds.append(Job.agent == query["agent"])
        if query.get("dataset_id"):
            conds.append(Job.dataset_id == query["dataset_id"])
        if query.get("batch_id"):
            conds.append(Job.batch_id == query["batch_id"])
        if query.get("status"):
            statuses = [s.strip().upper() for s in query["status"].split(",") if s.strip()]
            bad = [s for s in statuses if s not in Status.__members__]
            if bad:
                raise BadRequest(f"unknown status {bad[0]!r}; one of {', '.join(Status)}", field="status")
            conds.append(Job.status.in_(statuses))
        conds += created_between(query)[0]
        async with self.store.read() as session:
            total = await session.scalar(sa.select(sa.func.count()).select_from(Job).where(*conds)) or 0
            items = (
                await session.scalars(
                    sa.select(Job)
                    .where(*conds)
                    .order_by(Job.created_at.desc(), Job.id.desc())
                    .offset((page - 1) * page_size)
                    .limit(page_size)
                )
            ).all()
        return Page(list(items), total, page, page_size)

    # -- cancel -------------------------------------------------------------------------
    async def cancel(self, user: str, job_id: str, wait: float = 3.0) -> Job:
        """Cancel a job; 409 when it already ended. Waits briefly for the backend to confirm."""
        job = await self.get_job(user, job_id)
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status}", field="status", status_now=job.status)
        if job.status == Status.QUEUED:
            async with self.store.write() as tx:
                job = await tx.session.get(Job, job_id, with_for_update=not self.store.is_sqlite)
                if job.status == Status.QUEUED:
                    self._transition(tx, job, Status.CANCELLED, reason="cancelled", payload={"by": user})
                    return job
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status}", field="status", status_now=job.status)
        fut = asyncio.get_running_loop().create_future()
        self._terminal_waiters.setdefault(job_id, []).append(fut)
        try:
            await self.backend.cancel(job.backend_job_id)
        except BackendUnavailable as exc:
            raise BackendError(f"the backend cannot cancel now: {exc}") from None
        self._cancel_requested_by[job_id] = user
        async with self.store.write() as tx:
            current = await tx.session.get(Job, job_id)
            if current.status not in TERMINAL:
                current.reason = "cancel_requested"
                current.updated_at = utcnow()
        self.wake(reconcile=True)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=wait)
        except asyncio.TimeoutError:
            pass
        return await self.get_job(user, job_id)

    # -- the lifecycle ------------------------------------------------------------------
    def _transition(
        self,
        tx: Tx,
        job: Job,
        status: Status,
        *,
        reason: str | None = None,
        error: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> bool:
        """Move a job to ``status`` and record the event, in the caller's transaction."""
        if job.status == status:
            return False
        if not can_transition(job.status, status):
            log.warning("refused illegal transition %s → %s for job %s", job.status, status, job.id)
            return False
        previous = job.status
        now = utcnow()
        job.status = status.value
        job.updated_at = now
        if status == Status.RUNNING and job.started_at is None:
            job.started_at = now
        if status in TERMINAL:
            job.completed_at = now
            job.reason = reason
            if status == Status.COMPLETED:
                job.progress = 1.0
        elif reason:
            job.reason = reason
        if error:
            job.error = error[:4000]
        body = {"status": job.status, "previous": previous, "progress": job.progress}
        if reason:
            body["reason"] = reason
        if error:
            body["error"] = job.error
        body.update(payload or {})
        tx.emit(EVENT_FOR[status], user=job.user, job=job, payload=body)
        for hook in self.transition_hooks:
            hook(tx, job, previous)
        return True

    def _spec(self, job: Job, after_ok: list[str] | None = None) -> LaunchSpec:
        return LaunchSpec(
            job_id=job.id,
            job_dir=jobdir.job_dir(self.work_dir, job.user, job.id),
            agent=job.agent,
            user=job.user,
            gpu_count=job.gpu_count,
            max_runtime_seconds=job.max_runtime_seconds,
            correlation_id=job.correlation_id,
            name=f"ch-{job.agent}-{job.id[:8]}",
            after_ok=list(after_ok or []),
        )

    async def dispatch(self) -> None:
        """Start the queued jobs that can start now, highest priority first, FIFO within one.

        A job waits for its parents; a backend that enforces dependencies itself
        (Slurm's ``afterok``) gets it as soon as its parents are submitted. A
        batch of one agent goes to a backend with arrays as one array whose
        parallel limit the backend enforces; otherwise the limit is ours.
        """
        if time.monotonic() < self._backend_retry_at:
            return
        if self.backend.free_slots(0) == 0:
            return  # every slot is busy: nothing can start, so don't even look
        features = self.backend.supported_features()
        async with self.store.read() as session:
            queued = (
                await session.scalars(
                    sa.select(Job)
                    .where(Job.server_id == self.server_id, Job.status == Status.QUEUED.value)
                    .order_by(Job.priority.desc(), Job.created_at, Job.id)
                    .limit(200)
                )
            ).all()
            if not queued:
                return
            batch_ids = {j.batch_id for j in queued if j.batch_id}
            batches: dict[str, Batch] = {}
            agents_in: dict[str, set[str]] = {}
            active: Counter[str] = Counter()
            if batch_ids:
                batches = {b.id: b for b in (await session.scalars(sa.select(Batch).where(Batch.id.in_(batch_ids)))).all()}
                for batch_id, agent, status in (
                    await session.execute(sa.select(Job.batch_id, Job.agent, Job.status).where(Job.batch_id.in_(batch_ids)))
                ).all():
                    agents_in.setdefault(batch_id, set()).add(agent)
                    if status in ACTIVE:
                        active[batch_id] += 1
            parent_ids = {p for j in queued for p in (j.depends_on or [])}
            parents: dict[str, Job] = {}
            if parent_ids:
                parents = {
                    p.id: p for p in (await session.scalars(sa.select(Job).where(Job.id.in_(parent_ids)))).all()
                }
        dependency_failed: list[Job] = []
        arrays_sent: set[str] = set()
        unlimited: list[tuple[Job, list[Job], list[str]]] = []
        for job in queued:
            deps = [parents.get(p) for p in job.depends_on or []]
            if any(d is None or d.status in (Status.FAILED, Status.CANCELLED) for d in deps):
                dependency_failed.append(job)
                continue
            waiting = [d for d in deps if d.status != Status.COMPLETED]
            if waiting and not (
                "dependencies" in features and all(d.backend_job_id and d.status in ACTIVE for d in waiting)
            ):
                continue
            after_ok = [d.backend_job_id for d in waiting]
            batch = batches.get(job.batch_id) if job.batch_id else None
            if (
                batch is not None and batch.kind == "batch" and "arrays" in features
                and len(agents_in.get(batch.id, ())) == 1 and not job.depends_on
            ):
                if batch.id not in arrays_sent:
                    arrays_sent.add(batch.id)
                    group = [(j, [], []) for j in queued if j.batch_id == batch.id and not j.depends_on]
                    if await self._launch_array(group, batch.parallel_limit) is None:
                        break
                continue
            limit = batch.parallel_limit if batch is not None else None
            if limit is not None and active[batch.id] >= limit:
                continue
            free = self.backend.free_slots(job.gpu_count)
            if free is None:
                # No slots to account for (Slurm queues itself): submit together, below.
                unlimited.append((job, deps, after_ok))
                if batch is not None:
                    active[batch.id] += 1
                continue
            if free <= 0:
                break  # strict priority: a smaller job does not overtake a waiting bigger one
            started = await self._launch(job, deps, after_ok)
            if started is None:
                break  # the backend is unreachable: try again after the backoff
            if started and batch is not None:
                active[batch.id] += 1
        if unlimited:
            await self._launch_many(unlimited)
        if dependency_failed:
            async with self.store.write() as tx:
                for stale in dependency_failed:
                    job = await tx.session.get(Job, stale.id)
                    if job.status == Status.QUEUED:
                        self._transition(
                            tx, job, Status.CANCELLED, reason="dependency_failed",
                            error="a job this one depends on failed or was cancelled",
                        )

    def _prepare(self, job: Job, parents: list[Job], after_ok: list[str] | None = None) -> LaunchSpec:
        """Write the job's ``job.json`` (its inputs are its parents' outputs) and describe its launch."""
        spec = self._spec(job, after_ok)
        dataset = self.datasets.get(job.dataset_id) if job.dataset_id else None
        dataset_ref = dataset.ref() if dataset else None
        if dataset is not None and self.resolve_dataset is not None:
            dataset_ref = self.resolve_dataset(job.user, dataset)
        jobdir.write_job_file(
            spec.job_dir,
            {
                "id": job.id,
                "agent": job.agent,
                "params": job.params,
                "dataset": dataset_ref,
                "inputs": [str(jobdir.job_dir(self.work_dir, p.user, p.id) / "outputs") for p in parents],
                "correlation_id": job.correlation_id,
                "user": job.user,
                "server_root": str(self.server_root),
                "attempt": job.attempts + 1,
            },
        )
        return spec

    async def _launch(self, job: Job, parents: list[Job], after_ok: list[str]) -> bool | None:
        """Hand one job to the backend: True started, False failed to start, None backend down."""
        spec = self._prepare(job, parents, after_ok)
        try:
            backend_id = await self.backend.submit(spec)
        except BackendUnavailable as exc:
            self._backend_down(str(exc))
            return None
        except Exception as exc:  # a job the backend refuses fails; the queue goes on
            log.exception("backend refused job %s", job.id)
            async with self.store.write() as tx:
                current = await tx.session.get(Job, job.id)
                self._transition(tx, current, Status.FAILED, reason="submit_failed", error=str(exc))
            return False
        self._backend_up()
        return bool(await self._record_launch({job.id: backend_id}))

    async def _launch_many(self, jobs: list[tuple[Job, list[Job], list[str]]]) -> None:
        """Submit many jobs with a few submissions in flight, and record them in one transaction.

        One sbatch takes milliseconds of Slurm's time; doing them one after the other with a
        transaction each is what would make our path slower than raw sbatch.
        """
        if "arrays" in self.backend.supported_features() and len(jobs) > 1:
            # Jobs that arrived together and ask for the same resources go as one array:
            # one sbatch instead of many, which is what Slurm sites ask of heavy submitters.
            packs: dict[tuple[Any, ...], list[tuple[Job, list[Job], list[str]]]] = {}
            for item in jobs:
                job, _, after_ok = item
                packs.setdefault((job.agent, job.gpu_count, job.max_runtime_seconds, tuple(after_ok)), []).append(item)
            singles = [group[0] for group in packs.values() if len(group) == 1]
            for group in (g for g in packs.values() if len(g) > 1):
                if await self._launch_array(group, None) is None:
                    return
            jobs = singles
        gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        accepted: dict[str, str] = {}
        refused: dict[str, str] = {}
        down: list[str] = []

        async def one(job: Job, parents: list[Job], after_ok: list[str]) -> None:
            spec = self._prepare(job, parents, after_ok)
            async with gate:
                if down:
                    return
                try:
                    accepted[job.id] = await self.backend.submit(spec)
                except BackendUnavailable as exc:
                    down.append(str(exc))
                except Exception as exc:  # refused for good: that job fails, the rest go on
                    log.exception("backend refused job %s", job.id)
                    refused[job.id] = str(exc)

        await asyncio.gather(*(one(*item) for item in jobs))
        if down:
            self._backend_down(down[0])
        elif accepted:
            self._backend_up()
        if refused:
            async with self.store.write() as tx:
                for job_id, why in refused.items():
                    current = await tx.session.get(Job, job_id)
                    self._transition(tx, current, Status.FAILED, reason="submit_failed", error=why)
        if accepted:
            await self._record_launch(accepted)

    async def _launch_array(
        self, items: list[tuple[Job, list[Job], list[str]]], parallel_limit: int | None
    ) -> bool | None:
        """Submit jobs as one job array (each element stays its own job): True, False refused, None down."""
        specs = [self._prepare(job, parents, after_ok) for job, parents, after_ok in items]
        try:
            backend_ids = await self.backend.submit_array(specs, parallel_limit)
        except BackendUnavailable as exc:
            self._backend_down(str(exc))
            return None
        except Exception as exc:
            log.exception("backend refused an array of %d jobs", len(items))
            async with self.store.write() as tx:
                for job, _, _ in items:
                    current = await tx.session.get(Job, job.id)
                    self._transition(tx, current, Status.FAILED, reason="submit_failed", error=str(exc))
            return False
        self._backend_up()
        return bool(await self._record_launch({job.id: bid for (job, _, _), bid in zip(items, backend_ids)}))

    async def _record_launch(self, launched: dict[str, str]) -> int:
        """Record what the backend accepted: a run each, QUEUING. Returns how many were recorded."""
        taken_back: list[str] = []
        recorded = 0
        async with self.store.write() as tx:
            found = {
                j.id: j for j in (await tx.session.scalars(sa.select(Job).where(Job.id.in_(list(launched))))).all()
            }
            for job_id, backend_id in launched.items():
                current = found[job_id]
                if current.status != Status.QUEUED:
                    taken_back.append(backend_id)  # cancelled while we were submitting it
                    continue
                current.attempts += 1
                current.backend_job_id = backend_id
                tx.session.add(
                    Run(
                        job_id=current.id, attempt=current.attempts, backend=self.backend.name,
                        backend_job_id=backend_id, status=Status.QUEUING.value, events_offset=0,
                        submitted_at=utcnow(),
                    )
                )
                self._transition(
                    tx, current, Status.QUEUING, payload={"backend_job_id": backend_id, "attempt": current.attempts}
                )
                recorded += 1
        for backend_id in taken_back:
            await self.backend.cancel(backend_id)
        return recorded

    def _backend_down(self, why: str) -> None:
        self.backend_error = why
        self._backend_backoff = min(max(self._backend_backoff * 2, self.poll_interval), 60.0)
        self._backend_retry_at = time.monotonic() + self._backend_backoff
        log.warning("backend unavailable (%s); retrying in %.1fs", why, self._backend_backoff)

    def _backend_up(self) -> None:
        self.backend_error = None
        self._backend_backoff = 0.0
        self._backend_retry_at = 0.0

    async def reconcile(self) -> None:
        """Bring the store up to date with the job directories and the backend."""
        async with self.store.read() as session:
            rows = (
                await session.execute(
                    sa.select(Job, Run)
                    .join(Run, sa.and_(Run.job_id == Job.id, Run.attempt == Job.attempts))
                    .where(Job.server_id == self.server_id, Job.status.in_(list(ACTIVE)))
                )
            ).all()
        if not rows:
            return
        try:
            states = await self.backend.poll([run.backend_job_id for _, run in rows if run.backend_job_id])
            self._backend_up()
            reachable = True
        except BackendUnavailable as exc:
            self._backend_down(str(exc))
            states, reachable = {}, False

        def read_all() -> list[tuple[list[dict[str, Any]], int]]:
            # After the poll: a job that just ended has written all its records.
            return [
                jobdir.read_records(jobdir.job_dir(self.work_dir, job.user, job.id), run.events_offset)
                for job, run in rows
            ]

        changes = []
        for (job, run), (records, offset) in zip(rows, await asyncio.to_thread(read_all)):
            state = states.get(run.backend_job_id)
            if state is None and reachable:
                state = BackendJobState("FAILED", None, "lost", {"detail": "the backend no longer knows this job"})
            moved = state is not None and state.status != job.status and (
                state.status != Status.QUEUING or _requeued(job, state)
            )
            if records or moved:
                changes.append((job.id, run.id, records, offset, state))
        if not changes:
            return  # most ticks: every job as it was; no transaction at all
        async with self.store.write() as tx:
            for job_id, run_id, records, offset, state in changes:
                job = await tx.session.get(Job, job_id)
                run = await tx.session.get(Run, run_id)
                if job.status not in ACTIVE:
                    continue
                if records:
                    self._apply_records(tx, job, run, records, offset)
                if state is not None:
                    self._apply_state(tx, job, run, state)

    def _apply_records(self, tx: Tx, job: Job, run: Run, records: list[dict[str, Any]], offset: int) -> None:
        run.events_offset = offset
        progressed = False
        metrics = dict(job.metrics or {})
        for rec in records:
            kind = rec.get("type")
            if kind == "started":
                if job.status == Status.QUEUING:
                    self._transition(tx, job, Status.RUNNING, payload={"host": rec.get("host")})
                # The executor's own clock says when it started; polling only says when we noticed.
                try:
                    began = parse_iso(rec["ts"])
                except (KeyError, TypeError, ValueError):
                    began = utcnow()
                run.started_at = run.started_at or began
                if job.started_at is None or job.started_at > began:
                    job.started_at = began
            elif kind == "progress":
                if isinstance(rec.get("metrics"), dict):
                    metrics.update(rec["metrics"])
                if isinstance(rec.get("progress"), (int, float)):
                    job.progress = max(0.0, min(1.0, float(rec["progress"])))
                progressed = True
            elif kind in ("result", "error"):
                if kind == "result":
                    job.result = rec.get("result") if isinstance(rec.get("result"), dict) else {"value": rec.get("result")}
                else:
                    job.error = str(rec.get("error", ""))[:4000]
                try:
                    run.ended_at = parse_iso(rec["ts"])
                except (KeyError, TypeError, ValueError):
                    run.ended_at = utcnow()
        if progressed:
            job.metrics = metrics
            job.updated_at = utcnow()
            if job.status == Status.QUEUING:
                self._transition(tx, job, Status.RUNNING)
            # Records read together become one event: the latest state wins, nothing floods.
            tx.emit(
                "job.progress", user=job.user, job=job,
                payload={"status": job.status, "progress": job.progress, "metrics": metrics},
            )

    def _apply_state(self, tx: Tx, job: Job, run: Run, state: BackendJobState) -> None:
        target = Status(state.status)
        if _requeued(job, state):
            # It ran and will run again from the start: say so, and why, rather than keep
            # showing RUNNING while it waits (Slurm holds a requeued job a while).
            self._transition(tx, job, Status.QUEUING, reason="requeued", payload={
                "restarts": state.detail.get("restarts"), "slurm_state": state.detail.get("slurm_state"),
                "slurm_reason": state.detail.get("slurm_reason"),
            })
            job.progress = 0.0
            return
        if target == Status.QUEUING or job.status == target:
            return
        if target == Status.RUNNING:
            self._transition(tx, job, Status.RUNNING)
            return
        run.status = target.value
        run.exit_code = state.exit_code
        run.reason = state.reason
        run.ended_at = run.ended_at or utcnow()
        extra = {"exit_code": state.exit_code, **state.detail}
        if target == Status.FAILED and state.reason == "lost" and job.attempts <= job.retries:
            self._transition(tx, job, Status.QUEUED, reason="retry", payload={"retry": job.attempts, **extra})
            return
        error = None
        if target == Status.FAILED:
            error = job.error or _failure_text(state)
        reason = state.reason
        if target == Status.CANCELLED and job.reason == "cancel_requested":
            reason = "cancelled"
        requested_by = self._cancel_requested_by.pop(job.id, None)
        if target == Status.CANCELLED and requested_by:
            extra["by"] = requested_by
        if self._transition(tx, job, target, reason=reason, error=error, payload=extra):
            # When the job's last record was written is when it ended; we may notice later.
            job.completed_at = max(run.ended_at, job.started_at) if job.started_at else run.ended_at


def _requeued(job: Job, state: BackendJobState) -> bool:
    return job.status == Status.RUNNING and state.status == Status.QUEUING and state.reason == "requeued"


def _failure_text(state: BackendJobState) -> str:
    if state.reason == "timeout":
        return "the job ran past its max_runtime and was stopped"
    if state.reason == "lost":
        return "the job's process was lost (it ended without reporting)"
    if state.exit_code is not None:
        return f"the job exited with status {state.exit_code}"
    return state.reason or "failed"


def _envelope(body: Any, key: str) -> tuple[list[Any], int | None]:
    """The list under ``key`` (``jobs`` or ``stages``) and ``parallelLimit`` of a batch or pipeline."""
    if not isinstance(body, dict):
        raise BadRequest(f"send a JSON object with '{key}'", field=None)
    unknown = sorted(set(body) - {key, "parallelLimit"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; known fields: {key}, parallelLimit", field=unknown[0])
    items = body.get(key)
    if not isinstance(items, list) or not items:
        raise ValidationFailed(f"'{key}' must be a non-empty list of submissions", field=key)
    if len(items) > MAX_BATCH:
        raise ValidationFailed(f"at most {MAX_BATCH} {key} at once", field=key)
    limit = body.get("parallelLimit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValidationFailed("'parallelLimit' must be a positive integer", field="parallelLimit")
    return items, limit


def _page_args(query: dict[str, str]) -> tuple[int, int]:
    try:
        page = int(query.get("page", 1))
    except ValueError:
        raise BadRequest("'page' must be an integer ≥ 1", field="page") from None
    try:
        page_size = int(query.get("page_size", 20))
    except ValueError:
        raise BadRequest(f"'page_size' must be an integer from 1 to {MAX_PAGE_SIZE}", field="page_size") from None
    if page < 1:
        raise BadRequest("'page' must be an integer ≥ 1", field="page")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise BadRequest(f"'page_size' must be an integer from 1 to {MAX_PAGE_SIZE}", field="page_size")
    return page, page_size


def _topological_order(names: list[str], deps: list[list[str]]) -> list[int]:
    """Indices of stages, parents first; BadRequest naming the stage on a cycle."""
    index = {n: i for i, n in enumerate(names)}
    state = [0] * len(names)  # 0 new, 1 visiting, 2 done
    order: list[int] = []

    def visit(i: int, trail: list[str]) -> None:
        if state[i] == 2:
            return
        if state[i] == 1:
            cycle = " → ".join(trail[trail.index(names[i]):] + [names[i]])
            raise BadRequest(f"the stages form a cycle: {cycle}", field=f"stages[{i}].depends_on")
        state[i] = 1
        for parent in deps[i]:
            if parent in index:
                visit(index[parent], trail + [names[i]])
        state[i] = 2
        order.append(i)

    for i in range(len(names)):
        visit(i, [])
    return order


__all__ = ["Orchestrator", "Page", "BackendError"]
