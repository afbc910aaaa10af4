"""Choosing which queued jobs start now, and handing them to the backend.

The choice (:meth:`Dispatcher.dispatch`) is strict priority, FIFO within one, bounded by a
batch's ``parallelLimit``, the jobs' parents and the backend's free slots. Every hand-over
goes through :meth:`Dispatcher.launch`, so an unreachable backend (back off, try the same jobs
later) and a refused job (that job fails, the queue goes on) are told apart in one place.

Exactly once: a launch's intent (a fresh ``launch_token`` on each job) commits before the
backend is asked to start anything, and the backend leaves that token where it can be found
again. A server killed between the two finds the job QUEUED with a token; reconciliation then
adopts what the token left behind (:meth:`Backend.find_launch`) and only launches again, with a
fresh token, when provably nothing started.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from opentelemetry.trace import SpanKind

from cosmic_horizons_lab.backends.base import Backend, BackendUnavailable, LaunchSpec
from cosmic_horizons_lab.protocol import jobdir
from cosmic_horizons_lab.protocol.clock import utcnow
from cosmic_horizons_lab.protocol.states import ACTIVE, Status
from cosmic_horizons_lab.protocol.tracecontext import TRACEPARENT_ENV
from cosmic_horizons_lab.server.datasets import DatasetRegistry
from cosmic_horizons_lab.server.jobs.lifecycle import Lifecycle
from cosmic_horizons_lab.server.store.database import Store
from cosmic_horizons_lab.server.store.orm import BatchRecord, JobRecord, Run

log = logging.getLogger(__name__)

#: Submissions in flight at once to a backend that queues jobs itself (Slurm).
SUBMIT_CONCURRENCY = 8
#: The most queued jobs one dispatch looks at.
DISPATCH_WINDOW = 200
#: The fewest queued jobs a slot backend's dispatch loads at once (it loads 4 per free slot).
SLOT_WINDOW = 8
#: Test-only: seconds to sleep after a launch's intent commits and again after the backend
#: started it, before the start is recorded, so a crash drill can kill the server inside the
#: window exactly-once launching closes (``tests/test_crash_drill.py``). Unset in production.
DRILL_PAUSE_ENV = "COSMIC_HORIZONS_DRILL_DISPATCH_PAUSE"

#: A job ready to go: the job, its parents (whose outputs are its inputs) and the backend ids
#: of the parents it must wait for on the backend's side (Slurm's ``afterok``).
Ready = tuple[JobRecord, list[JobRecord], list[str]]


@dataclass
class Launch:
    """One call to the backend: one job, or several as one job array (each stays its own job)."""

    items: list[Ready]
    array: bool = False
    parallel_limit: int | None = None


class BackendHealth:
    """Whether the backend answered last time, and when to ask again.

    Dispatch and reconciliation both report to it; while it backs off, dispatch does not try,
    so a down scheduler is asked at most once per backoff, not once per job per tick.
    """

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        #: why the backend is unreachable, for the health endpoint; None when it answers
        self.error: str | None = None
        self.retry_at = 0.0
        self.backoff = 0.0

    def down(self, why: str) -> None:
        self.error = why
        self.backoff = min(max(self.backoff * 2, self.poll_interval), 60.0)
        self.retry_at = time.monotonic() + self.backoff
        log.warning("backend unavailable (%s); retrying in %.1fs", why, self.backoff)

    def up(self) -> None:
        self.error = None
        self.backoff = 0.0
        self.retry_at = 0.0

    def backing_off(self) -> bool:
        return time.monotonic() < self.retry_at


def launch_spec(job: JobRecord, work_dir: Path, after_ok: list[str] | None = None) -> LaunchSpec:
    """How the backend sees ``job``: also what a restarted server re-attaches with."""
    return LaunchSpec(
        job_id=job.id,
        job_dir=jobdir.job_dir(work_dir, job.user, job.id),
        agent=job.agent,
        user=job.user,
        gpu_count=job.gpu_count,
        max_runtime_seconds=job.max_runtime_seconds,
        correlation_id=job.correlation_id,
        name=f"ch-{job.agent}-{job.id[:8]}",
        after_ok=list(after_ok or []),
        launch_token=job.launch_token or "",
        # the job's trace, for what the job process starts (W3C's environment carrier)
        env={TRACEPARENT_ENV: job.traceparent} if job.traceparent else {},
    )


def new_launch_token() -> str:
    """A fresh launch token: one per launch call (array elements add ``.<index>``)."""
    return "chl" + uuid.uuid4().hex


async def record_launched(store: Store, lifecycle: Lifecycle, backend: Backend, launched: dict[str, str],
                          *, adopted: bool = False) -> tuple[int, list[str]]:
    """Record what the backend started: a run each, QUEUING, in one transaction.

    Returns how many were recorded, and the backend ids of jobs no longer QUEUED (cancelled
    while they were being started), which the caller cancels on the backend. Either way the
    jobs' launch intents are settled (cleared; a run keeps its token).
    """
    taken_back: list[str] = []
    recorded = 0
    async with store.write() as tx:
        found = {
            j.id: j for j in (await tx.session.scalars(sa.select(JobRecord).where(JobRecord.id.in_(list(launched))))).all()
        }
        for job_id, backend_id in launched.items():
            current = found[job_id]
            token, current.launch_token = current.launch_token, None  # settled: the run keeps it
            if current.status != Status.QUEUED:
                taken_back.append(backend_id)
                continue
            current.attempts += 1
            current.backend_job_id = backend_id
            tx.session.add(
                Run(
                    job_id=current.id, attempt=current.attempts, backend=backend.name,
                    backend_job_id=backend_id, launch_token=token, status=Status.QUEUING.value,
                    events_offset=0, submitted_at=utcnow(),
                )
            )
            payload: dict[str, Any] = {"backend_job_id": backend_id, "attempt": current.attempts}
            if adopted:
                payload["adopted"] = True
            lifecycle.transition(tx, current, Status.QUEUING, payload=payload)
            recorded += 1
    return recorded, taken_back


def queued_first(server_id: str, window: int, seen: list[str] | None = None) -> sa.Select:
    """The first ``window`` of the server's QUEUED jobs without a launch intent, not in ``seen``:
    highest priority first, FIFO within one. The order is the index ``ix_jobs_dispatch_order``'s,
    so the database reads the first few off it rather than sorting every queued job."""
    query = (
        sa.select(JobRecord)
        .where(JobRecord.server_id == server_id, JobRecord.status == Status.QUEUED.value,
               JobRecord.launch_token.is_(None))
        .order_by(JobRecord.priority.desc(), JobRecord.created_at, JobRecord.id)
        .limit(window)
    )
    if seen:
        query = query.where(JobRecord.id.not_in(seen))
    return query


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        backend: Backend,
        datasets: DatasetRegistry,
        lifecycle: Lifecycle,
        health: BackendHealth,
        work_dir: Path,
        server_root: Path,
        server_id: str,
        resolve_dataset: Callable[[str, Any], dict[str, Any]] | None = None,
        sample_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.backend = backend
        self.datasets = datasets
        #: Seconds between the job's own resource samples, written into its job.json.
        self.sample_interval = sample_interval
        self.lifecycle = lifecycle
        self.health = health
        self.work_dir = Path(work_dir)
        self.server_root = Path(server_root)
        self.server_id = server_id
        #: ``resolve(user, dataset) -> job.json dataset ref``: staging points jobs at a fresh
        #: staged copy; without it jobs read the archive.
        self.resolve_dataset = resolve_dataset
        self.drill_pause = float(os.environ.get(DRILL_PAUSE_ENV) or 0.0)

    async def dispatch(self) -> None:
        """Start the queued jobs that can start now, highest priority first, FIFO within one.

        A job waits for its parents; a backend that enforces dependencies itself
        (Slurm's ``afterok``) gets it as soon as its parents are submitted. A
        batch of one agent goes to a backend with arrays as one array whose
        parallel limit the backend enforces; otherwise the limit is ours.
        """
        if self.health.backing_off():
            return
        free = self.backend.free_slots(0)
        if free == 0:
            return  # every slot is busy: nothing can start, so don't even look
        if free is None:  # the backend queues itself: one window, submitted together
            await self._dispatch_window(DISPATCH_WINDOW, [])
            return
        # A slot backend can start only `free` jobs: loading the whole window of queued jobs
        # on every wake (each submission's) cost more than the submissions themselves. So look
        # at a few per free slot, and further only past jobs that could not start (waiting for
        # parents, held by their batch's limit) while slots are left.
        seen: list[str] = []
        while len(seen) < DISPATCH_WINDOW:
            limit = min(DISPATCH_WINDOW - len(seen), max(4 * free, SLOT_WINDOW))
            more = await self._dispatch_window(limit, seen)
            free = self.backend.free_slots(0) or 0
            if not more or free <= 0:
                return

    async def _dispatch_window(self, window: int, seen: list[str]) -> bool:
        """Dispatch from the first ``window`` queued jobs not in ``seen`` (which it extends).

        True when it looked at a full window and started everything it could from it (so the
        next window may hold jobs that can start); False when the queue or the slots ran out.
        """
        features = self.backend.supported_features()
        async with self.store.read() as session:
            queued = (await session.scalars(queued_first(self.server_id, window, seen))).all()
            if not queued:
                return False
            seen.extend(j.id for j in queued)
            batch_ids = {j.batch_id for j in queued if j.batch_id}
            batches: dict[str, BatchRecord] = {}
            agents_in: dict[str, set[str]] = {}
            active: Counter[str] = Counter()
            if batch_ids:
                batches = {b.id: b for b in (await session.scalars(sa.select(BatchRecord).where(BatchRecord.id.in_(batch_ids)))).all()}
                for batch_id, agent, status in (
                    await session.execute(sa.select(JobRecord.batch_id, JobRecord.agent, JobRecord.status).where(JobRecord.batch_id.in_(batch_ids)))
                ).all():
                    agents_in.setdefault(batch_id, set()).add(agent)
                    if status in ACTIVE:
                        active[batch_id] += 1
            parent_ids = {p for j in queued for p in (j.depends_on or [])}
            parents: dict[str, JobRecord] = {}
            if parent_ids:
                parents = {
                    p.id: p for p in (await session.scalars(sa.select(JobRecord).where(JobRecord.id.in_(parent_ids)))).all()
                }
        dependency_failed: list[JobRecord] = []
        exhausted = False
        arrays_sent: set[str] = set()
        unlimited: list[Ready] = []
        # Jobs of one GPU count that fit the free slots together start as one group: one intent
        # transaction and one record transaction for all of them, not two per job.
        group: list[Ready] = []
        group_gpus, group_room = 0, 0
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
                    group: list[Ready] = [(j, [], []) for j in queued if j.batch_id == batch.id and not j.depends_on]
                    if await self.launch([Launch(group, array=True, parallel_limit=batch.parallel_limit)]) is None:
                        exhausted = True
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
            if group and (job.gpu_count != group_gpus or len(group) >= group_room):
                # the free slots counted for the group are taken: start it, then count again
                started = await self.launch([Launch([item]) for item in group])
                group = []
                if started is None:
                    exhausted = True
                    break  # the backend is unreachable: try again after the backoff
                free = self.backend.free_slots(job.gpu_count) or 0
            if free <= 0:
                exhausted = True
                break  # strict priority: a smaller job does not overtake a waiting bigger one
            if not group:
                # free_slots(n) jobs needing n GPUs each can start now, by the backend's word
                group_gpus, group_room = job.gpu_count, free
            group.append((job, deps, after_ok))
            if batch is not None:
                active[batch.id] += 1
        if group:
            if await self.launch([Launch([item]) for item in group]) is None:
                exhausted = True
        if unlimited:
            await self.launch(self._pack(unlimited, features))
        if dependency_failed:
            async with self.store.write() as tx:
                for stale in dependency_failed:
                    job = await tx.session.get(JobRecord, stale.id)
                    if job.status == Status.QUEUED:
                        self.lifecycle.transition(
                            tx, job, Status.CANCELLED, reason="dependency_failed",
                            error="a job this one depends on failed or was cancelled",
                        )
        return not exhausted and len(queued) == window

    @staticmethod
    def _pack(ready: list[Ready], features: set[str]) -> list[Launch]:
        """Jobs that arrived together and ask for the same resources go as one array.

        One sbatch instead of many is what Slurm sites ask of heavy submitters; the rest go
        one by one. Arrays come first, as the jobs they hold were queued first.
        """
        if "arrays" not in features or len(ready) <= 1:
            return [Launch([item]) for item in ready]
        packs: dict[tuple[Any, ...], list[Ready]] = {}
        for item in ready:
            job, _, after_ok = item
            packs.setdefault((job.agent, job.gpu_count, job.max_runtime_seconds, tuple(after_ok)), []).append(item)
        arrays = [Launch(group, array=True) for group in packs.values() if len(group) > 1]
        return arrays + [Launch(group) for group in packs.values() if len(group) == 1]

    async def launch(self, launches: list[Launch]) -> int | None:
        """Hand jobs to the backend, a few calls in flight; the one place its errors are handled.

        Returns how many jobs are now QUEUING, or None when the backend is unreachable (those
        not sent stay QUEUED for the next try; anything it accepted first is still recorded).
        A job the backend refuses fails with the backend's reason; the rest go on. What it
        accepted is recorded in one transaction: one sbatch takes milliseconds of Slurm's
        time, and a transaction per job is what would make our path slower than raw sbatch.
        """
        launches = await self._intend(launches)
        if not launches:
            return 0
        if self.drill_pause:
            await asyncio.sleep(self.drill_pause)
        # a backend with slots starts its jobs one after another (it hands out its slots as it
        # goes); one that queues them itself takes a few submissions at once
        gate = asyncio.Semaphore(SUBMIT_CONCURRENCY if self.backend.free_slots(0) is None else 1)
        accepted: list[dict[str, str] | None] = [None] * len(launches)
        refused: dict[str, str] = {}
        down: list[str] = []
        unsent: list[str] = []

        async def send(n: int, launch: Launch) -> None:
            specs = [self._prepare(job, parents, after_ok) for job, parents, after_ok in launch.items]
            async with gate:
                if down:
                    unsent.extend(job.id for job, _, _ in launch.items)
                    return
                try:
                    with self.lifecycle.tracing.job_spans(
                        "backend.submit", [job for job, _, _ in launch.items], kind=SpanKind.CLIENT,
                        attributes={"cosmic.backend": self.backend.name, "cosmic.array_size": len(specs)},
                    ) as spans:
                        if launch.array:
                            ids = await self.backend.submit_array(specs, launch.parallel_limit)
                        else:
                            ids = [await self.backend.submit(specs[0])]
                        for span, backend_id in zip(spans, ids):
                            span.set_attribute("cosmic.backend_job_id", backend_id)
                except BackendUnavailable as exc:
                    # It may have started all the same (a timed-out sbatch): the intent stays,
                    # and reconciliation asks the backend once it answers.
                    down.append(str(exc))
                    return
                except Exception as exc:  # refused for good: these jobs fail, the rest go on
                    if launch.array:
                        log.exception("backend refused an array of %d jobs", len(launch.items))
                    else:
                        log.exception("backend refused job %s", launch.items[0][0].id)
                    refused.update((job.id, str(exc)) for job, _, _ in launch.items)
                    return
            accepted[n] = {job.id: backend_id for (job, _, _), backend_id in zip(launch.items, ids)}

        await asyncio.gather(*(send(n, launch) for n, launch in enumerate(launches)))
        launched = {job_id: backend_id for sent in accepted if sent for job_id, backend_id in sent.items()}
        if down:
            self.health.down(down[0])
        elif launched:
            self.health.up()
        if self.drill_pause and launched:
            await asyncio.sleep(self.drill_pause)
        if refused or unsent:
            async with self.store.write() as tx:
                for job_id, why in refused.items():
                    current = await tx.session.get(JobRecord, job_id)
                    self.lifecycle.transition(tx, current, Status.FAILED, reason="submit_failed", error=why)
                for job_id in [*unsent, *refused]:  # nothing started: nothing to look for later
                    current = await tx.session.get(JobRecord, job_id)
                    current.launch_token = None
        recorded = 0
        if launched:
            recorded, taken_back = await record_launched(self.store, self.lifecycle, self.backend, launched)
            for backend_id in taken_back:  # cancelled while we were submitting it
                await self.backend.cancel(backend_id)
        return None if down else recorded

    async def _intend(self, launches: list[Launch]) -> list[Launch]:
        """Commit each launch's intent (a fresh token on its jobs) before anything starts.

        Jobs that are no longer QUEUED (cancelled meanwhile) or already carry an intent are left
        out. An array's elements share one token with their index appended, so the backend
        can name the array by one token and its elements by their place in it.
        """
        kept: list[Launch] = []
        async with self.store.write() as tx:
            ids = [job.id for launch in launches for job, _, _ in launch.items]
            current = {
                j.id: j for j in (await tx.session.scalars(sa.select(JobRecord).where(JobRecord.id.in_(ids)))).all()
            }
            for launch in launches:
                items = [item for item in launch.items
                         if current[item[0].id].status == Status.QUEUED and current[item[0].id].launch_token is None]
                if not items:
                    continue
                token = new_launch_token()
                for i, (job, _, _) in enumerate(items):
                    job.launch_token = current[job.id].launch_token = f"{token}.{i}" if launch.array else token
                kept.append(Launch(items, launch.array, launch.parallel_limit))
        return kept

    def _prepare(self, job: JobRecord, parents: list[JobRecord], after_ok: list[str] | None = None) -> LaunchSpec:
        """Write the job's ``job.json`` (its inputs are its parents' outputs) and describe its launch."""
        spec = launch_spec(job, self.work_dir, after_ok)
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
                jobdir.TRACEPARENT_KEY: job.traceparent,
                "sample_interval": self.sample_interval,
            },
        )
        return spec
