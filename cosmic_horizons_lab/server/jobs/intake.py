"""Accepting work into the store: single submissions, batches and pipelines.

Everything a request asks for is checked before anything is written, and a batch or pipeline
is written whole or not at all. Single submissions are group-committed (see
:meth:`Intake.submit`): that is what lets a two-core server take hundreds a second. A new job
is QUEUED and goes no further here; dispatch starts it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.protocol.clock import utcnow
from cosmic_horizons_lab.protocol.states import Status
from cosmic_horizons_lab.server.api import requests
from cosmic_horizons_lab.server.api.submission import Submission, SubmissionValidator
from cosmic_horizons_lab.server.errors import BadRequest, LabError
from cosmic_horizons_lab.server.store.database import Store, Tx
from cosmic_horizons_lab.server.store.orm import BatchRecord, JobRecord
from cosmic_horizons_lab.server.tracing import traceparent_of

#: ``async check(tx, user, submission)``, run inside the submission's transaction before the job
#: is added; raising a LabError refuses that submission (quotas hook in here).
SubmitCheck = Callable[[Tx, str, Submission], Awaitable[None]]


def new_id() -> str:
    return uuid.uuid4().hex


class Intake:
    def __init__(
        self,
        *,
        store: Store,
        validator: SubmissionValidator,
        checks: list[SubmitCheck],
        backend_name: str,
        server_id: str,
        wake: Callable[[], None],
    ) -> None:
        self.store = store
        self.validator = validator
        #: the list the server appends its checks to (shared, not copied)
        self.checks = checks
        self.backend_name = backend_name
        self.server_id = server_id
        #: tells the loop there is something to dispatch, once the jobs are committed
        self.wake = wake
        self._pending: list[tuple[str, Submission, str | None, str | None, asyncio.Future, str | None]] = []
        self._writer: asyncio.Task | None = None

    async def submit(
        self,
        user: str,
        body: Any,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Validate and queue one job; returns (job, created). Same key, same user → the first job.

        Concurrent submissions are written together, one transaction for all
        that arrived while the previous one committed (group commit).
        """
        key = requests.idempotency_key(idempotency_key)
        sub = self.validator.validate(body)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        # the request's span, taken here: the group's writer task runs in the first caller's context
        self._pending.append((user, sub, key, correlation_id, fut, traceparent_of()))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_submissions())
        return await fut

    async def _write_submissions(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            outcomes: list[tuple[asyncio.Future, Any, bool]] = []
            try:
                async with self.store.write() as tx:
                    keys = {(u, k) for u, _, k, *_ in group if k}
                    known: dict[tuple[str, str], JobRecord] = {}
                    if keys:
                        rows = await tx.session.scalars(
                            sa.select(JobRecord).where(JobRecord.idempotency_key.in_({k for _, k in keys}))
                        )
                        known = {(j.user, j.idempotency_key): j for j in rows if (j.user, j.idempotency_key) in keys}
                    for user, sub, key, cid, fut, traceparent in group:
                        if key and (user, key) in known:
                            outcomes.append((fut, known[(user, key)], False))
                            continue
                        try:
                            await self._check_parents(tx, user, sub.depends_on, "depends_on")
                            for check in self.checks:
                                await check(tx, user, sub)
                        except LabError as exc:
                            # one refused submission must not sink the others written with it
                            outcomes.append((fut, exc, False))
                            continue
                        job = self._new_job(tx, user, sub, correlation_id=cid, idempotency_key=key,
                                            traceparent=traceparent or "")
                        if key:
                            known[(user, key)] = job
                        outcomes.append((fut, job, True))
                    created = [value for _, value, made in outcomes if made]
                    if created:
                        # one executemany for the group, not the ORM's unit of work per object
                        # (about a sixth of the server's time per submission); the jobs are
                        # answered as built, and the checks above never needed them flushed
                        await tx.session.execute(sa.insert(JobRecord.__table__),
                                                 [_row(job) for job in created])
            except Exception as exc:
                for *_, fut, _ in group:
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

    async def submit_batch(self, user: str, body: Any, *, correlation_id: str | None = None) -> tuple[BatchRecord, list[JobRecord]]:
        """Queue many jobs at once, all or none; at most ``parallelLimit`` of them run at once."""
        items, limit = requests.batch_body(body)
        subs = [self.validator.validate(item, prefix=f"jobs[{i}].") for i, item in enumerate(items)]
        async with self.store.write() as tx:
            for i, sub in enumerate(subs):
                await self._check_parents(tx, user, sub.depends_on, f"jobs[{i}].depends_on")
                for check in self.checks:
                    await check(tx, user, sub)
            batch = BatchRecord(id=new_id(), user=user, parallel_limit=limit, kind="batch", created_at=utcnow())
            tx.session.add(batch)
            jobs = [self._new_job(tx, user, sub, correlation_id=correlation_id, batch=batch) for sub in subs]
            tx.session.add_all(jobs)  # the ORM writes them after the batch their key names
        self.wake()
        return batch, jobs

    async def submit_pipeline(
        self, user: str, body: Any, *, correlation_id: str | None = None
    ) -> tuple[BatchRecord, dict[str, JobRecord]]:
        """Queue stages that depend on each other by name; each takes its parents' outputs.

        Refused whole (400) when a stage names an unknown parent or the stages form a cycle.
        Stages are written parents first, so each child can name its parents' new ids.
        """
        stages, limit, names = requests.pipeline_body(body)
        subs = [
            self.validator.validate(stage, prefix=f"stages[{i}].", extra_fields=frozenset({"name"}))
            for i, stage in enumerate(stages)
        ]
        order = _topological_order(names, [s.depends_on for s in subs])
        async with self.store.write() as tx:
            batch = BatchRecord(id=new_id(), user=user, parallel_limit=limit, kind="pipeline", created_at=utcnow())
            tx.session.add(batch)
            ids = {name: new_id() for name in names}
            jobs: dict[str, JobRecord] = {}
            for i in order:
                sub = subs[i]
                parents = [ids.get(p, p) for p in sub.depends_on]
                outside = [p for p in sub.depends_on if p not in ids]
                await self._check_parents(tx, user, outside, f"stages[{i}].depends_on")
                for check in self.checks:
                    await check(tx, user, sub)
                sub.depends_on = parents
                jobs[names[i]] = job = self._new_job(
                    tx, user, sub, correlation_id=correlation_id, batch=batch, job_id=ids[names[i]]
                )
                tx.session.add(job)
        self.wake()
        return batch, jobs

    async def _check_parents(self, tx: Tx, user: str, parents: list[str], field: str) -> None:
        # Another user's job is as unknown as one that does not exist.
        if not parents:
            return
        found = set(
            (await tx.session.scalars(sa.select(JobRecord.id).where(JobRecord.user == user, JobRecord.id.in_(parents)))).all()
        )
        missing = [p for p in parents if p not in found]
        if missing:
            raise BadRequest(f"unknown parent job {missing[0]!r}", field=field)

    def _new_job(
        self,
        tx: Tx,
        user: str,
        sub: Submission,
        *,
        correlation_id: str | None,
        idempotency_key: str | None = None,
        batch: BatchRecord | None = None,
        job_id: str | None = None,
        traceparent: str | None = None,
    ) -> JobRecord:
        """A new QUEUED job, not yet in the session (the caller writes it), and its event."""
        now = utcnow()
        job = JobRecord(
            id=job_id or new_id(),
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
            # the job's trace: the submitting request's span (a batch's: its caller's, current here)
            traceparent=(traceparent if traceparent is not None else traceparent_of()) or None,
            batch_id=batch.id if batch else None,
            depends_on=sub.depends_on,
            backend=self.backend_name,
            server_id=self.server_id,
            gpu_count=sub.gpu_count,
            max_runtime_seconds=sub.max_runtime_seconds,
            retries=sub.retries,
            attempts=0,
            created_at=now,
            updated_at=now,
        )
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


def _row(job: JobRecord) -> dict[str, Any]:
    """The columns :meth:`Intake._new_job` set on ``job`` (the same for every job it builds)."""
    return {k: v for k, v in vars(job).items() if not k.startswith("_sa_")}


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
