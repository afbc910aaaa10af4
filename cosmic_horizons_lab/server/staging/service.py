"""Dataset staging: copy a dataset from the archive (``datasets_dir``) to a target (scratch) for jobs.

Why a copy at all: on TACC the archive lives on a filesystem that compute
nodes read slowly (or not at all), and $SCRATCH is fast but purged — files
untouched for ``purge_days`` (10 on TACC) disappear. So a dataset is staged
once per user and target, jobs read the staged copy, and a copy older than
the purge age is reported stale and staged again when a job uses it.

A transfer is a row in ``transfers`` (the queue: ``high`` before ``normal``,
then first come; at most ``concurrency`` run at once). Bytes go, in chunks,
to ``<target>/<user>/<file>.part``; when all are there the ``.part`` is read
back and its SHA-256 compared with the source's (cached per archive file in
``datasets``), and only a match is renamed to the final name — a mismatch
fails the transfer and deletes the ``.part``, so the final name only ever
holds verified bytes. A server that dies mid-transfer resumes from the size
of the ``.part`` when it starts again (the final read-back covers the bytes
written before the crash too). Progress is a stream of ``staging.*`` events
(job_id null, the user's): queued, started, progress (bytes, rate, ETA),
completed, failed, cancelled.

This module is the service: the queue, each transfer's phases, its events,
and what the API asks. The bytes are moved by :mod:`.copy` (in threads,
never on the event loop), checksums are :mod:`.checksums`', requests are
validated and answers shaped by :mod:`.requests`, targets are :mod:`.targets`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Status, StatusCode

from cosmic_horizons_lab.protocol.checksums import sha256_file, sha256_hasher
from cosmic_horizons_lab.protocol.clock import utcnow
from cosmic_horizons_lab.server.datasets import Dataset, DatasetRegistry, UnsafeDataset, dataset_bytes, dataset_files
from cosmic_horizons_lab.server.errors import Conflict, Forbidden
from cosmic_horizons_lab.server.science_worker import run_science
from cosmic_horizons_lab.server.staging.checksums import (
    ChecksumMismatch,
    cached_checksum,
    remember_checksum,
    sha256_dataset,
)
from cosmic_horizons_lab.server.staging.copy import (
    LiveCopy,
    TransferAborted,
    copy_chunks,
    copy_tree,
    install,
    remove,
    resume_offset,
)
from cosmic_horizons_lab.server.staging.requests import (
    destination,
    lookup_dataset,
    lookup_target,
    not_staged,
    parse_estimate,
    parse_stage,
    transfer_json,
    transfer_payload,
)
from cosmic_horizons_lab.server.staging.targets import Target
from cosmic_horizons_lab.server.store.database import Store
from cosmic_horizons_lab.server.store.orm import Transfer
from cosmic_horizons_lab.server.tracing import Tracing

log = logging.getLogger(__name__)

ACTIVE_STATES = ("queued", "running", "verifying")
#: Throughput assumed for a target no transfer has measured yet (bytes/s): a single
#: stream to Lustre scratch over a data-transfer node is of this order.
DEFAULT_THROUGHPUT = 100e6


class StagingService:
    """The staging service: the queue, the copies, and what the API asks of them."""

    def __init__(
        self,
        *,
        store: Store,
        datasets: DatasetRegistry,
        targets: dict[str, Target],
        server_id: str,
        concurrency: int = 2,
        chunk_bytes: int = 8 << 20,
        verify: bool = True,
        max_bytes_per_second: float = 0.0,
        progress_interval: float = 0.5,
        default_throughput: float = DEFAULT_THROUGHPUT,
        on_bytes: Callable[[str, int], None] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.store = store
        #: each transfer is a span ``staging.transfer`` (server/tracing.py)
        self.tracing = tracing or Tracing.disabled()
        self.datasets = datasets
        self.targets = targets
        self.server_id = server_id
        self.concurrency = max(1, concurrency)
        self.chunk_bytes = max(64 << 10, chunk_bytes)
        self.verify = verify
        self.max_bytes_per_second = max_bytes_per_second
        self.progress_interval = progress_interval
        self.default_throughput = default_throughput
        self.on_bytes = on_bytes
        self._tasks: dict[str, asyncio.Task] = {}
        self._live: dict[str, LiveCopy] = {}
        self._pump_lock = asyncio.Lock()
        self._stopping = False
        #: (user, dataset_id) → (staged path, target, convert) of the newest completed transfer.
        self._staged: dict[tuple[str, str], tuple[Path, str, str | None]] = {}
        self._background: set[asyncio.Task] = set()

    # -- start / stop ------------------------------------------------------------------
    async def start(self) -> None:
        """Put transfers a previous server left unfinished back in the queue; they resume from their .part."""
        async with self.store.write() as tx:
            await tx.session.execute(
                sa.update(Transfer)
                .where(Transfer.server_id == self.server_id, Transfer.status.in_(["running", "verifying"]))
                .values(status="queued")
            )
        async with self.store.read() as session:
            rows = (await session.scalars(
                sa.select(Transfer).where(Transfer.status == "completed").order_by(Transfer.completed_at)
            )).all()
        for row in rows:
            self._staged[(row.user, row.dataset_id)] = (Path(row.dest_path), row.target, row.convert)
        await self._pump()

    async def stop(self) -> None:
        """Stop copying without cancelling: the transfers stay owed and resume at the next start."""
        self._stopping = True
        for live in self._live.values():
            live.stop.set()
        tasks = list(self._tasks.values())
        for task in tasks:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                task.cancel()

    # -- lookups (never a raw path from the request: see requests.py) ----------------------
    def target(self, name: Any) -> Target:
        """The configured target ``name`` names; an API error on ``target_resource`` if none."""
        return lookup_target(self.targets, name)

    def dataset(self, dataset_id: Any) -> Dataset:
        """The archive dataset ``dataset_id`` names, checked to be inside the archive and present."""
        return lookup_dataset(self.datasets, dataset_id)

    # -- API ---------------------------------------------------------------------------
    async def stage(self, user: str, body: Any) -> tuple[dict[str, Any], bool]:
        """Queue a transfer; returns (status document, created). An identical transfer in flight is reused."""
        req = parse_stage(body, self.datasets, self.targets)
        dataset, target = req.dataset, req.target
        try:
            await asyncio.to_thread(dataset_files, dataset.path)
        except UnsafeDataset as exc:
            raise Forbidden(f"{exc}; a dataset with links inside is not staged", field="dataset_id") from None
        dest = destination(user, dataset, target, req.convert)
        created = await self._enqueue(user, dataset, target, dest, req.priority, req.convert, req.force)
        return await self.status(user, dataset.id, target.name), created

    async def _enqueue(
        self, user: str, dataset: Dataset, target: Target, dest: Path, priority: str, convert: str | None, force: bool
    ) -> bool:
        async with self.store.write() as tx:
            latest = await tx.session.scalar(
                sa.select(Transfer)
                .where(Transfer.user == user, Transfer.dataset_id == dataset.id, Transfer.target == target.name)
                .order_by(Transfer.created_at.desc(), Transfer.id.desc())
                .limit(1)
            )
            if latest is not None and latest.status in ACTIVE_STATES and latest.convert == convert:
                if priority == "high" and latest.priority != "high" and latest.status == "queued":
                    latest.priority = "high"
                return False
            if (
                not force and latest is not None and latest.status == "completed" and latest.convert == convert
                and Path(latest.dest_path).exists() and not target.is_stale(Path(latest.dest_path))
            ):
                return False
            row = Transfer(
                id=uuid.uuid4().hex, user=user, dataset_id=dataset.id, target=target.name, priority=priority,
                status="queued", convert=convert, source_path=str(dataset.path), dest_path=str(dest),
                total_bytes=dataset.size_bytes, bytes_done=0, resumed_from=0, server_id=self.server_id,
                created_at=utcnow(),
            )
            tx.session.add(row)
            tx.emit("staging.queued", user=user, payload=transfer_payload(row))
        await self._pump()
        return True

    async def status(self, user: str, dataset_id: str, target_name: str | None = None) -> dict[str, Any]:
        """The newest transfer of this dataset for this user (to one target, or any)."""
        dataset = self.dataset(dataset_id)
        query = sa.select(Transfer).where(Transfer.user == user, Transfer.dataset_id == dataset.id)
        if target_name is not None:
            query = query.where(Transfer.target == self.target(target_name).name)
        async with self.store.read() as session:
            row = await session.scalar(query.order_by(Transfer.created_at.desc(), Transfer.id.desc()).limit(1))
        if row is None:
            target = self.target(target_name or "tacc_scratch") if (target_name or "tacc_scratch") in self.targets else None
            return not_staged(dataset, target.name if target else target_name)
        return self._to_json(row)

    async def cancel(self, user: str, dataset_id: str, target_name: str | None) -> dict[str, Any]:
        dataset = self.dataset(dataset_id)
        query = sa.select(Transfer).where(
            Transfer.user == user, Transfer.dataset_id == dataset.id, Transfer.status.in_(ACTIVE_STATES)
        )
        if target_name is not None:
            query = query.where(Transfer.target == self.target(target_name).name)
        async with self.store.write() as tx:
            row = await tx.session.scalar(query.order_by(Transfer.created_at.desc()).limit(1))
            if row is None:
                raise Conflict(f"no staging of {dataset.id!r} is in progress", field="dataset_id")
            if row.status == "queued" and row.id not in self._tasks:
                row.status, row.completed_at = "cancelled", utcnow()
                tx.emit("staging.cancelled", user=user, payload=transfer_payload(row))
                return self._to_json(row)
            tid = row.id
        live = self._live.get(tid)
        if live is not None:
            live.cancel.set()
        task = self._tasks.get(tid)
        if task is not None:
            await asyncio.wait({task}, timeout=10)
        async with self.store.read() as session:
            row = await session.get(Transfer, tid)
        return self._to_json(row)

    async def measured_throughput(self, target: str) -> tuple[float, int]:
        """(bytes/s, transfers measured): total bytes over total copy time of the last 20 plain copies."""
        async with self.store.read() as session:
            rows = (
                await session.execute(
                    sa.select(Transfer.total_bytes, Transfer.resumed_from, Transfer.copy_seconds)
                    .where(Transfer.target == target, Transfer.status == "completed", Transfer.convert.is_(None),
                           Transfer.copy_seconds > 0)
                    .order_by(Transfer.completed_at.desc())
                    .limit(20)
                )
            ).all()
        if not rows:
            return self.default_throughput, 0
        moved = sum(total - resumed for total, resumed, _ in rows)
        seconds = sum(s for *_, s in rows)
        return (moved / seconds if seconds > 0 else self.default_throughput), len(rows)

    async def estimate(self, user: str, body: Any) -> dict[str, Any]:
        dataset, target = parse_estimate(body, self.datasets, self.targets)
        rate, samples = await self.measured_throughput(target.name)
        return {
            "dataset_id": dataset.id,
            "target_resource": target.name,
            "size_bytes": dataset.size_bytes,
            "throughput_bytes_per_second": round(rate, 1),
            "estimated_seconds": round(dataset.size_bytes / rate, 3),
            "estimated_minutes": round(dataset.size_bytes / rate / 60, 3),
            "basis": "measured" if samples else "default",
            "samples": samples,
        }

    def resolve(self, user: str, dataset: Dataset) -> dict[str, Any]:
        """What a job of ``user`` reads for ``dataset``: a fresh staged copy if there is one, else the archive.

        Synchronous (the orchestrator calls it while writing ``job.json``), so
        it reads the in-memory index of completed transfers, kept from the
        store at start and on every completion; its file I/O is one stat.
        A staged copy past its target's purge age is not trusted (scratch may
        have purged part of it): the job reads the archive and the dataset is
        staged again, so the next job finds it fresh.
        """
        ref = dataset.ref()
        staged = self._staged.get((user, dataset.id))
        if staged is None or staged[1] not in self.targets:
            return ref
        dest, target_name, convert = staged
        target = self.targets[target_name]
        if not dest.exists() or target.is_stale(dest):
            self._staged.pop((user, dataset.id), None)
            try:
                again = destination(user, dataset, target, convert)
                task = asyncio.get_running_loop().create_task(
                    self._enqueue(user, dataset, target, again, "normal", convert, True))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            except Exception:
                log.exception("could not re-stage %s for %s", dataset.id, user)
            return ref
        # A job's read keeps the copy "in use" for the purge clock, as TACC's atime does
        # (which purges file by file: a folder's files are all touched).
        try:
            for f in dataset_files(dest) + ([dest] if dest.is_dir() else []):
                os.utime(f)
        except (OSError, UnsafeDataset):
            log.warning("staged copy %s is not usable; reading the archive", dest)
            return ref
        fmt = "uvh5" if convert == "uvh5" else ref["format"]
        return {**ref, "path": str(dest), "format": fmt, "staged": {"target": target.name, "archive_path": ref["path"]}}

    # -- the queue -----------------------------------------------------------------------
    async def _pump(self) -> None:
        """Start queued transfers while slots are free: high before normal, then oldest first."""
        if self._stopping:
            return
        async with self._pump_lock:
            free = self.concurrency - len(self._tasks)
            if free <= 0:
                return
            async with self.store.read() as session:
                query = sa.select(Transfer.id).where(Transfer.server_id == self.server_id, Transfer.status == "queued")
                if self._tasks:
                    query = query.where(Transfer.id.notin_(list(self._tasks)))
                ids = (
                    await session.scalars(
                        query.order_by(sa.case((Transfer.priority == "high", 0), else_=1), Transfer.created_at, Transfer.id)
                        .limit(free)
                    )
                ).all()
            for tid in ids:
                task = asyncio.get_running_loop().create_task(self._traced_run(tid))
                self._tasks[tid] = task
                task.add_done_callback(lambda _t, tid=tid: self._finished(tid))

    def _finished(self, tid: str) -> None:
        self._tasks.pop(tid, None)
        self._live.pop(tid, None)
        if not self._stopping:
            asyncio.get_running_loop().create_task(self._pump())

    async def _traced_run(self, tid: str) -> None:
        """One transfer as a trace of its own (it outlives the request that queued it, which a
        link names), its outcome set by :meth:`_end` or :meth:`_fail` on the current span."""
        current = trace.get_current_span().get_span_context()
        with self.tracing.tracer.start_as_current_span(
            "staging.transfer", context=otel_context.Context(), attributes={"cosmic.staging.transfer_id": tid},
            links=[Link(current)] if current.is_valid else [],
        ):
            await self._run(tid)

    async def _run(self, tid: str) -> None:
        async with self.store.read() as session:
            queued = await session.get(Transfer, tid)
            preset = self.datasets.get(queued.dataset_id) if queued is not None and queued.status == "queued" else None
        if preset is not None and preset.source == "simulated" and not preset.path.exists():
            await self._phase(tid, "generating")
            try:
                await self.datasets.materialize(preset)
            except Exception as exc:
                await self._end(tid, "failed", "staging.failed", error=f"cannot generate {preset.id}: {exc}")
                return
        async with self.store.write() as tx:
            row = await tx.session.get(Transfer, tid)
            if row is None or row.status != "queued":
                return
            src, dest = Path(row.source_path), Path(row.dest_path)
            part = Path(str(dest) + ".part")
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                destination(row.user, self.dataset(row.dataset_id), self.target(row.target), row.convert)
                offset = resume_offset(src, part) if row.convert is None else 0
                total = dataset_bytes(src)
            except Exception as exc:
                self._fail(tx, row, f"cannot stage: {getattr(exc, 'message', exc)}")
                return
            row.status, row.total_bytes, row.resumed_from, row.bytes_done = "running", total, offset, offset
            row.started_at = row.started_at or utcnow()
            row.error = None
            user, dataset_id, convert, target_name = row.user, row.dataset_id, row.convert, row.target
            tx.emit("staging.started", user=user, payload={**transfer_payload(row), "resumed_from": offset})
        live = LiveCopy(total=total, target=target_name, done=offset, start_bytes=offset)
        self._live[tid] = live
        try:
            if convert is not None:
                copy_seconds, verify_seconds, digest = await self._convert(tid, src, part, live)
            else:
                copy_seconds, verify_seconds, digest = await self._copy(tid, dataset_id, src, part, live, offset)
            await asyncio.to_thread(install, part, dest)
        except TransferAborted as exc:
            if exc.reason == "cancelled":
                await asyncio.to_thread(remove, part)
                await self._end(tid, "cancelled", "staging.cancelled", error="cancelled by the user")
            return  # stopping: the row stays running and resumes at the next start
        except ChecksumMismatch as exc:
            await asyncio.to_thread(remove, part)
            await self._end(tid, "failed", "staging.failed", error=str(exc))
            return
        except Exception as exc:
            log.exception("staging %s failed", tid)
            await asyncio.to_thread(remove, part)
            await self._end(tid, "failed", "staging.failed", error=f"{type(exc).__name__}: {exc}")
            return
        await self._end(tid, "completed", "staging.completed", sha256=digest,
                        copy_seconds=copy_seconds, verify_seconds=verify_seconds, done=live.done)

    async def _copy(self, tid: str, dataset_id: str, src: Path, part: Path, live: LiveCopy, offset: int) -> tuple[float, float, str]:
        known = await cached_checksum(self.store, src)
        hasher = None
        started = time.monotonic()
        if src.is_dir():
            copy = asyncio.ensure_future(asyncio.to_thread(
                copy_tree, src, part, live, chunk=self.chunk_bytes, max_rate=self.max_bytes_per_second,
                hash_source=known is None,
            ))
        else:
            if known is None:
                hasher = hashlib.sha256()
                if offset:  # resuming without a known checksum: hash the source bytes the .part already holds
                    hasher = await asyncio.to_thread(sha256_hasher, src, limit=offset, interrupt=live.check_stop)
                started = time.monotonic()
            copy = asyncio.ensure_future(asyncio.to_thread(
                copy_chunks, src, part, live, offset=offset, chunk=self.chunk_bytes,
                max_rate=self.max_bytes_per_second, hasher=hasher,
            ))
        reported = offset
        while not copy.done():
            await asyncio.wait({copy}, timeout=self.progress_interval)
            if live.done != reported and not copy.done():
                reported = await self._progress(tid, live, reported)
        tree_digest = await copy  # raises what the thread raised
        copy_seconds = time.monotonic() - started
        await self._progress(tid, live, reported)
        expected = known or tree_digest or hasher.hexdigest()
        if known is None:
            await remember_checksum(self.store, dataset_id, src, expected)
        if not self.verify:
            return copy_seconds, 0.0, expected
        live.phase = "verifying"
        await self._phase(tid, "verifying")
        started = time.monotonic()
        actual = await asyncio.to_thread(sha256_dataset, part, live.check_stop)
        verify_seconds = time.monotonic() - started
        if actual != expected:
            raise ChecksumMismatch(
                f"SHA-256 of the staged copy ({actual[:16]}…) differs from the archive's ({expected[:16]}…); "
                "the copy was discarded"
            )
        return copy_seconds, verify_seconds, expected

    async def _convert(self, tid: str, src: Path, part: Path, live: LiveCopy) -> tuple[float, float, str]:
        started = time.monotonic()
        await self._phase(tid, "converting")
        await asyncio.to_thread(run_science, "conversion", ["uvh5", str(src), str(part)])
        copy_seconds = time.monotonic() - started
        live.done = live.total
        started = time.monotonic()
        digest = await asyncio.to_thread(sha256_file, part, interrupt=live.check_stop)
        self._count(live, live.total)
        return copy_seconds, time.monotonic() - started, digest

    def _count(self, live: LiveCopy, n: int) -> None:
        if self.on_bytes is not None and n > 0:
            self.on_bytes(live.target, n)

    async def _progress(self, tid: str, live: LiveCopy, reported: int) -> int:
        done = live.done
        self._count(live, done - reported)
        async with self.store.write() as tx:
            row = await tx.session.get(Transfer, tid)
            row.bytes_done = done
            eta = live.eta()
            tx.emit("staging.progress", user=row.user, payload={
                **transfer_payload(row), "phase": live.phase, "rate_bytes_per_second": round(live.rate(), 1),
                "eta_seconds": None if eta is None else round(eta, 3),
            })
        return done

    async def _phase(self, tid: str, phase: str) -> None:
        async with self.store.write() as tx:
            row = await tx.session.get(Transfer, tid)
            row.status = "verifying" if phase == "verifying" else row.status
            tx.emit("staging.progress", user=row.user, payload={**transfer_payload(row), "phase": phase})

    async def _end(self, tid: str, status: str, event: str, *, error: str | None = None, sha256: str | None = None,
                   copy_seconds: float | None = None, verify_seconds: float | None = None, done: int | None = None) -> None:
        async with self.store.write() as tx:
            row = await tx.session.get(Transfer, tid)
            row.status, row.completed_at, row.error = status, utcnow(), error
            if done is not None:
                row.bytes_done = done
            if sha256 is not None:
                row.sha256 = sha256
            row.copy_seconds, row.verify_seconds = copy_seconds, verify_seconds
            payload = transfer_payload(row)
            if status == "completed":
                payload.update(sha256=sha256, copy_seconds=round(copy_seconds or 0, 6),
                               verify_seconds=round(verify_seconds or 0, 6),
                               rate_bytes_per_second=round((row.total_bytes - row.resumed_from) / copy_seconds, 1)
                               if copy_seconds else None)
            if error:
                payload["error"] = error
            tx.emit(event, user=row.user, payload=payload)
            _annotate(row)
            if status == "completed":
                self._staged[(row.user, row.dataset_id)] = (Path(row.dest_path), row.target, row.convert)

    def _fail(self, tx: Any, row: Transfer, error: str) -> None:
        row.status, row.completed_at, row.error = "failed", utcnow(), error
        tx.emit("staging.failed", user=row.user, payload={**transfer_payload(row), "error": error})
        _annotate(row)

    def _to_json(self, row: Transfer) -> dict[str, Any]:
        return transfer_json(row, self._live.get(row.id), self.targets.get(row.target))


def _annotate(row: Transfer) -> None:
    """The transfer's outcome on its span (the current one, :meth:`StagingService._traced_run`'s)."""
    span = trace.get_current_span()
    span.set_attributes({"cosmic.staging.dataset_id": row.dataset_id, "cosmic.staging.target": row.target,
                         "cosmic.staging.status": row.status, "cosmic.staging.bytes": row.total_bytes or 0,
                         "cosmic.staging.resumed_from": row.resumed_from or 0, "enduser.id": row.user})
    if row.status == "failed":
        span.set_status(Status(StatusCode.ERROR, (row.error or "")[:500]))
