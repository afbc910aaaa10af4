"""Matching the store with what really happened: the backend's view and the job directories.

The store only says what we last knew. After a restart (:meth:`Reconciler.adopt`) and then on
every poll, the truth is what the backend reports and what each job wrote to its directory;
this module folds both back into the store. Most ticks nothing moved, and then nothing is
written at all.

It also settles launch intents a dead server left (:meth:`Reconciler.resolve_intents`): a job
QUEUED with a launch token may have been started; what the token left behind is adopted, and
the job is launched again only when the backend says provably nothing started.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from opentelemetry.trace import SpanKind

from cosmic_horizons_lab.backends.base import Backend, BackendJobState, BackendUnavailable
from cosmic_horizons_lab.protocol import jobdir
from cosmic_horizons_lab.protocol.clock import parse_iso, utcnow
from cosmic_horizons_lab.protocol.states import ACTIVE, TERMINAL, Status
from cosmic_horizons_lab.server.jobs.dispatch import BackendHealth, launch_spec, record_launched
from cosmic_horizons_lab.server.jobs.lifecycle import Lifecycle
from cosmic_horizons_lab.server.jobs.samples import JobSamples
from cosmic_horizons_lab.server.store.database import Store, Tx
from cosmic_horizons_lab.server.store.orm import JobRecord, Run

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        *,
        store: Store,
        backend: Backend,
        lifecycle: Lifecycle,
        health: BackendHealth,
        work_dir: Path,
        server_id: str,
    ) -> None:
        self.store = store
        self.backend = backend
        self.lifecycle = lifecycle
        self.health = health
        self.work_dir = Path(work_dir)
        self.server_id = server_id
        #: the jobs' own resource samples (resources.jsonl → job_samples)
        self.samples = JobSamples(store, work_dir)
        #: job id -> who asked to cancel it, for its CANCELLED event (the backend may not know)
        self.cancel_requested_by: dict[str, str] = {}

    async def adopt(self) -> None:
        """Re-attach to the jobs a previous server left active, so their exits are seen again."""
        async with self.store.read() as session:
            rows = (
                await session.scalars(
                    sa.select(JobRecord).where(JobRecord.server_id == self.server_id, JobRecord.status.in_(list(ACTIVE)))
                )
            ).all()
        for job in rows:
            if job.backend_job_id:
                await self.backend.adopt(job.backend_job_id, launch_spec(job, self.work_dir))
        await self.resolve_intents()

    async def resolve_intents(self) -> None:
        """Settle the launches whose intent committed but whose start was never recorded.

        Such a job still has its launch token: the server died (or the backend stopped
        answering) between committing the intent and recording the backend's id. What that
        launch started is adopted, as if its start had been recorded then (or, for a job
        cancelled meanwhile, stopped); a job whose launch provably started nothing has its
        token cleared, and dispatch launches it afresh.
        """
        async with self.store.read() as session:
            pending = (
                await session.scalars(
                    sa.select(JobRecord).where(
                        JobRecord.launch_token.is_not(None), JobRecord.server_id == self.server_id,
                    )
                )
            ).all()
        if not pending:
            return
        found: dict[str, str] = {}
        nothing: list[str] = []
        for job in pending:
            try:
                backend_id = await self.backend.find_launch(launch_spec(job, self.work_dir))
            except BackendUnavailable as exc:
                self.health.down(str(exc))
                break  # ask again when it answers; the intents stay
            except NotImplementedError:
                log.warning("backend %s cannot look for launch %s; launching job %s again",
                            self.backend.name, job.launch_token, job.id)
                backend_id = None
            if backend_id is None:
                nothing.append(job.id)
            else:
                found[job.id] = backend_id
        if found:
            log.info("adopted %d job(s) whose start a previous server did not record", len(found))
            _, taken_back = await record_launched(self.store, self.lifecycle, self.backend, found, adopted=True)
            for backend_id in taken_back:
                await self.backend.cancel(backend_id)
        if nothing:
            async with self.store.write() as tx:
                for job_id in nothing:
                    job = await tx.session.get(JobRecord, job_id)
                    job.launch_token = None

    async def reconcile(self) -> None:
        """Bring the store up to date with the job directories and the backend."""
        if not self.health.backing_off():
            await self.resolve_intents()
        async with self.store.read() as session:
            rows = (
                await session.execute(
                    sa.select(JobRecord, Run)
                    .join(Run, sa.and_(Run.job_id == JobRecord.id, Run.attempt == JobRecord.attempts))
                    .where(JobRecord.server_id == self.server_id, JobRecord.status.in_(list(ACTIVE)))
                )
            ).all()
        if not rows:
            return
        poll_started = time.time_ns()
        try:
            states = await self.backend.poll([run.backend_job_id for _, run in rows if run.backend_job_id])
            self.health.up()
            reachable = True
        except BackendUnavailable as exc:
            self.health.down(str(exc))
            states, reachable = {}, False
        polled = (poll_started, time.time_ns())  # when the poll ran, for each moved job's span
        try:
            # After the poll and before any job is ended below: an ended job's samples are all in.
            await self.samples.ingest(rows)
        except Exception:
            log.exception("could not ingest the jobs' resource samples")

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
            if moved:  # one poll serves every job: its span goes into the trace of each it moved
                self.lifecycle.tracing.record_job_span("backend.poll", job, *polled, kind=SpanKind.CLIENT, attributes={
                    "cosmic.backend": self.backend.name, "cosmic.backend.state": state.status,
                    "cosmic.backend.jobs_polled": len(rows)})
            if records or moved:
                changes.append((job.id, run.id, records, offset, state))
        if not changes:
            return  # most ticks: every job as it was; no transaction at all
        ended: list[JobRecord] = []
        async with self.store.write() as tx:
            # the rows read above again, now inside the transaction: one query per table for all
            jobs = {j.id: j for j in (await tx.session.scalars(
                sa.select(JobRecord).where(JobRecord.id.in_([c[0] for c in changes])))).all()}
            runs = {r.id: r for r in (await tx.session.scalars(
                sa.select(Run).where(Run.id.in_([c[1] for c in changes])))).all()}
            for job_id, run_id, records, offset, state in changes:
                job, run = jobs.get(job_id), runs.get(run_id)
                if job is None or run is None or job.status not in ACTIVE:
                    continue
                if records:
                    self._apply_records(tx, job, run, records, offset)
                if state is not None:
                    self._apply_state(tx, job, run, state)
                if job.status in TERMINAL and job.traceparent:
                    ended.append(job)
        if ended and self.lifecycle.tracing.recording:  # the job's last span is written: its stages join its trace
            await asyncio.to_thread(self._ingest_spans, ended)

    def _ingest_spans(self, jobs: list[JobRecord]) -> None:
        for job in jobs:
            try:
                self.lifecycle.tracing.ingest(job, jobdir.read_records(
                    jobdir.job_dir(self.work_dir, job.user, job.id), 0, jobdir.SPANS_FILE)[0])
            except Exception:  # telemetry: never the job's bookkeeping
                log.exception("could not read the spans of job %s", job.id)

    def _apply_records(self, tx: Tx, job: JobRecord, run: Run, records: list[dict[str, Any]], offset: int) -> None:
        run.events_offset = offset
        progressed = False
        metrics = dict(job.metrics or {})
        for rec in records:
            kind = rec.get("type")
            if kind == "started":
                if job.status == Status.QUEUING:
                    self.lifecycle.transition(tx, job, Status.RUNNING, payload={"host": rec.get("host")})
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
                self.lifecycle.transition(tx, job, Status.RUNNING)
            # Records read together become one event: the latest state wins, nothing floods.
            tx.emit(
                "job.progress", user=job.user, job=job,
                payload={"status": job.status, "progress": job.progress, "metrics": metrics},
            )

    def _apply_state(self, tx: Tx, job: JobRecord, run: Run, state: BackendJobState) -> None:
        target = Status(state.status)
        if _requeued(job, state):
            # It ran and will run again from the start: say so, and why, rather than keep
            # showing RUNNING while it waits (Slurm holds a requeued job a while).
            self.lifecycle.transition(tx, job, Status.QUEUING, reason="requeued", payload={
                "restarts": state.detail.get("restarts"), "slurm_state": state.detail.get("slurm_state"),
                "slurm_reason": state.detail.get("slurm_reason"),
            })
            job.progress = 0.0
            return
        if target == Status.QUEUING or job.status == target:
            return
        if target == Status.RUNNING:
            self.lifecycle.transition(tx, job, Status.RUNNING)
            return
        run.status = target.value
        run.exit_code = state.exit_code
        run.reason = state.reason
        run.ended_at = run.ended_at or utcnow()
        extra = {"exit_code": state.exit_code, **state.detail}
        if target == Status.FAILED and state.reason == "lost" and job.attempts <= job.retries:
            self.lifecycle.transition(tx, job, Status.QUEUED, reason="retry", payload={"retry": job.attempts, **extra})
            return
        error = None
        if target == Status.FAILED:
            error = job.error or _failure_text(state)
        reason = state.reason
        if target == Status.CANCELLED and job.reason == "cancel_requested":
            reason = "cancelled"
        requested_by = self.cancel_requested_by.pop(job.id, None)
        if target == Status.CANCELLED and requested_by:
            extra["by"] = requested_by
        if self.lifecycle.transition(tx, job, target, reason=reason, error=error, payload=extra):
            # When the job's last record was written is when it ended; we may notice later.
            job.completed_at = max(run.ended_at, job.started_at) if job.started_at else run.ended_at


def _requeued(job: JobRecord, state: BackendJobState) -> bool:
    return job.status == Status.RUNNING and state.status == Status.QUEUING and state.reason == "requeued"


def _failure_text(state: BackendJobState) -> str:
    if state.reason == "timeout":
        return "the job ran past its max_runtime and was stopped"
    if state.reason == "lost":
        return "the job's process was lost (it ended without reporting)"
    if state.exit_code is not None:
        return f"the job exited with status {state.exit_code}"
    return state.reason or "failed"
