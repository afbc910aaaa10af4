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

Paths never come from the request: dataset ids and target names are looked
up in the registry and the configured targets, and a destination that
resolves outside its target's root (a symlink planted in scratch, a user name
with ``..``) is refused. Copying and hashing run in threads, never on the
event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.protocol.clock import isoformat, utcnow
from cosmic_horizons_lab.server.science_worker import run_science
from cosmic_horizons_lab.server.datasets import Dataset, DatasetRegistry, UnsafeDataset, dataset_bytes, dataset_files
from cosmic_horizons_lab.server.errors import BadRequest, Conflict, Forbidden, NotFound, ValidationFailed
from cosmic_horizons_lab.server.store.orm import DatasetRecord, Transfer
from cosmic_horizons_lab.server.store.database import Store

log = logging.getLogger(__name__)

PRIORITIES = ("high", "normal")
CONVERSIONS = {"uvh5": ".uvh5"}
ACTIVE_STATES = ("queued", "running", "verifying")
STAGE_FIELDS = {"dataset_id", "target_resource", "priority", "convert", "force"}
#: Throughput assumed for a target no transfer has measured yet (bytes/s): a single
#: stream to Lustre scratch over a data-transfer node is of this order.
DEFAULT_THROUGHPUT = 100e6
HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class Target:
    """A named place datasets can be staged to (only configured names are accepted)."""

    name: str
    root: Path
    purge_days: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.root), "purge_days": self.purge_days}


class TransferAborted(Exception):
    """The copy thread stopped on request: ``reason`` is "cancelled" or "stopping"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChecksumMismatch(Exception):
    pass


@dataclass
class _Live:
    """What a copy thread shares with the event loop: counters it writes, flags it reads."""

    total: int
    target: str = ""
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    start_bytes: int = 0
    phase: str = "copying"
    cancel: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        """Count copied bytes (a folder's files are copied by several threads at once)."""
        with self._lock:
            self.done += n

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.done - self.start_bytes) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None


def sha256_file(path: Path, stop: threading.Event | None = None, limit: int | None = None) -> str:
    """SHA-256 of a file (or its first ``limit`` bytes). Blocking: run it in a thread."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb", buffering=0) as fh:
        # A small file gets a small buffer: zeroing 8 MiB for each of a folder's files costs.
        buf = bytearray(max(4096, min(HASH_CHUNK, os.fstat(fh.fileno()).st_size + 1)))
        view = memoryview(buf)
        while left is None or left > 0:
            n = fh.readinto(buf if left is None or left >= len(buf) else view[:left])
            if not n:
                break
            h.update(view[:n])
            if left is not None:
                left -= n
            if stop is not None and stop.is_set():
                raise TransferAborted("stopping")
    return h.hexdigest()


def copy_chunks(
    src: Path, part: Path, live: _Live, *, offset: int, chunk: int, max_rate: float,
    hasher: Any | None, sync: bool = True,
) -> None:
    """Copy ``src`` into ``part`` from ``offset`` on, chunk by chunk; blocking (a thread).

    ``hasher`` (when the source's checksum is not known yet) is fed the
    source bytes as they pass. ``max_rate`` (bytes/s, 0 = none) paces the
    copy so a transfer can be polite to a shared filesystem. Between chunks
    it honours cancel and stop, so neither waits for a whole file. ``sync``
    False leaves the fsync to the caller (a folder syncs its filesystem once).
    """
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(part, flags, 0o644)
    buf = bytearray(0)  # allocated when bytes pass through Python: zeroing 8 MiB per small file costs
    view = memoryview(buf)
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        with open(src, "rb", buffering=0) as fh:
            fh.seek(offset)
            paced_from, paced_bytes = time.monotonic(), 0
            pos = offset  # in this file (live.done counts a whole folder's bytes)
            size = os.fstat(fh.fileno()).st_size
            in_kernel = hasattr(os, "copy_file_range")
            while True:
                if live.cancel.is_set():
                    raise TransferAborted("cancelled")
                if live.stop.is_set():
                    raise TransferAborted("stopping")
                n = 0
                if hasher is None and in_kernel:
                    # The bytes need not pass through Python: let the kernel copy them, as cp does.
                    if pos >= size:
                        break  # saves the call that would say so, for each of a folder's small files
                    try:
                        n = os.copy_file_range(fh.fileno(), fd, chunk)
                    except OSError:
                        in_kernel = False
                        os.lseek(fd, pos, os.SEEK_SET)
                        fh.seek(pos)
                        continue
                    if not n:
                        break
                else:
                    if len(buf) != chunk:
                        buf = bytearray(chunk)
                        view = memoryview(buf)
                    n = fh.readinto(buf)
                    if not n:
                        break
                    mv = view[:n]
                    while mv:
                        written = os.write(fd, mv)
                        mv = mv[written:]
                    if hasher is not None:
                        hasher.update(view[:n])
                pos += n
                live.add(n)
                if max_rate > 0:
                    paced_bytes += n
                    ahead = paced_bytes / max_rate - (time.monotonic() - paced_from)
                    if ahead > 0:
                        live.cancel.wait(ahead)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_line(rel: str, size: int, digest: str) -> bytes:
    return f"{digest}  {size}  {rel}\n".encode()


def sha256_dataset(path: Path, stop: threading.Event | None = None) -> str:
    """SHA-256 of a file; of a folder (a Measurement Set), that of its manifest.

    The manifest is one ``<sha256>  <size>  <relative path>`` line per file,
    sorted by path: a changed, missing, extra or renamed file changes it.
    Blocking: run it in a thread.
    """
    if not path.is_dir():
        return sha256_file(path, stop)
    manifest = hashlib.sha256()
    for f in dataset_files(path):
        manifest.update(_manifest_line(f.relative_to(path).as_posix(), f.stat().st_size, sha256_file(f, stop)))
    return manifest.hexdigest()


def copy_tree(
    src: Path, part: Path, live: _Live, *, chunk: int, max_rate: float, hash_source: bool, workers: int = 4,
) -> str | None:
    """Copy a folder dataset into the folder ``part``; blocking (a thread).

    Files the ``part`` folder already holds in full are kept, a partial one is
    resumed from its size (the read-back verification covers them all). A
    Measurement Set is thousands of files, many small: ``workers`` threads copy
    them at once, so one file's Python overhead hides behind another's kernel
    copy — unless the copy is paced (``max_rate``), which asks for politeness,
    not speed: then one thread. Returns the source's manifest SHA-256 when ``hash_source``.
    """
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    part.mkdir(exist_ok=True)
    root = part.resolve()
    files = dataset_files(src)
    top = len(str(src)) + 1
    rels = [str(f)[top:] for f in files]
    for rel_dir in sorted({os.path.dirname(r) for r in rels} - {""}):
        out_dir = part / rel_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        if not out_dir.resolve().is_relative_to(root):
            raise UnsafeDataset(f"{rel_dir} in the staged copy leads out of it")
    digests: dict[str, tuple[int, str]] = {}
    failed = threading.Event()
    if max_rate > 0:
        workers = 1

    def one(f: Path, rel: str) -> None:
        if failed.is_set():
            return
        out = part / rel
        size = os.stat(f).st_size
        try:
            have = os.lstat(out).st_size
        except FileNotFoundError:
            have = 0
        offset = have if have <= size else 0
        hasher = None
        if hash_source:
            hasher = _hash_prefix(f, offset, live.stop) if offset else hashlib.sha256()
        try:
            copy_chunks(f, out, live, offset=offset, chunk=chunk, max_rate=max_rate, hasher=hasher, sync=False)
        except BaseException:
            failed.set()
            raise
        if hasher is not None:
            digests[rel] = (size, hasher.hexdigest())

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="staging-copy") as pool:
        futures = [pool.submit(one, f, rel) for f, rel in zip(files, rels)]
        wait(futures, return_when=FIRST_EXCEPTION)  # all done, or one failed
        for fut in futures:
            if fut.done() and fut.exception() is not None:
                failed.set()  # the others stop at their next file
                raise fut.exception()
    _sync_filesystem(part)
    if not hash_source:
        return None
    manifest = hashlib.sha256()
    for rel in rels:  # sorted, as dataset_files lists them
        manifest.update(_manifest_line(rel, *digests[rel]))
    return manifest.hexdigest()


def _sync_filesystem(path: Path) -> None:
    """Make a copied folder durable with one ``syncfs`` of its filesystem (what ``sync -f``
    does) rather than an fsync per file; per-file fsyncs where syncfs is not available."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if getattr(libc, "syncfs", None) is not None and libc.syncfs(fd) == 0:
            return
    except OSError:
        pass
    finally:
        os.close(fd)
    for f in dataset_files(path):
        ffd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(ffd)
        finally:
            os.close(ffd)


def resume_offset(src: Path, part: Path) -> int:
    """Bytes of ``src`` a previous attempt left in ``part`` (a file, or a folder of them)."""
    if part.is_symlink() or not part.exists():
        return 0
    if not src.is_dir():
        have = part.stat().st_size if part.is_file() else 0
        return have if have <= src.stat().st_size else 0
    done = 0
    for f in dataset_files(src):
        out = part / f.relative_to(src)
        if out.is_file() and not out.is_symlink():
            have, size = out.stat().st_size, f.stat().st_size
            done += have if have <= size else 0
    return done


class Staging:
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
    ) -> None:
        self.store = store
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
        self._live: dict[str, _Live] = {}
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

    # -- lookups (never a raw path from the request) ---------------------------------------
    def target(self, name: Any) -> Target:
        if not isinstance(name, str) or name not in self.targets:
            raise ValidationFailed(
                f"unknown target {name!r}; configured targets: {', '.join(sorted(self.targets))}",
                field="target_resource",
            )
        return self.targets[name]

    def dataset(self, dataset_id: Any) -> Dataset:
        dataset = self.datasets.get(dataset_id) if isinstance(dataset_id, str) and dataset_id else None
        if dataset is None:
            raise NotFound(f"unknown dataset {dataset_id!r} (GET datasets lists them)", field="dataset_id")
        root = self.datasets.root.resolve()
        if not dataset.path.resolve().is_relative_to(root):
            raise Forbidden("the dataset resolves outside the archive", field="dataset_id")
        if not dataset.path.exists():
            raise ValidationFailed(f"dataset {dataset.id!r} has no data yet", field="dataset_id")
        return dataset

    def destination(self, user: str, dataset: Dataset, target: Target, convert: str | None) -> Path:
        """``<target>/<user>/<file>``, refused if anything on the way leads out of the target's root."""
        root = target.root.resolve()
        name = dataset.path.name if convert is None else dataset.id + CONVERSIONS[convert]
        if "/" in user or user in ("", ".", "..") or "\x00" in user:
            raise Forbidden("this user name cannot name a staging folder", field=None)
        dest = root / user / name
        for step in (dest.parent, dest, Path(str(dest) + ".part")):
            if step.is_symlink() or not step.resolve().is_relative_to(root):
                raise Forbidden(
                    f"the staging destination leads outside target {target.name!r}; refused", field="target_resource"
                )
        return dest

    def is_stale(self, path: Path, target: Target) -> bool:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > target.purge_days * 86400

    # -- API ---------------------------------------------------------------------------
    async def stage(self, user: str, body: Any) -> tuple[dict[str, Any], bool]:
        """Queue a transfer; returns (status document, created). An identical transfer in flight is reused."""
        if not isinstance(body, dict):
            raise BadRequest("a staging request is a JSON object", field=None)
        unknown = sorted(set(body) - STAGE_FIELDS)
        if unknown:
            raise BadRequest(f"unknown field {unknown[0]!r}; known fields: {', '.join(sorted(STAGE_FIELDS))}", field=unknown[0])
        dataset = self.dataset(body.get("dataset_id"))
        target = self.target(body.get("target_resource", "tacc_scratch"))
        priority = body.get("priority", "normal")
        if priority not in PRIORITIES:
            raise ValidationFailed("'priority' must be 'high' or 'normal'", field="priority")
        convert = body.get("convert")
        if convert is not None and convert not in CONVERSIONS:
            raise ValidationFailed(f"'convert' must be one of {sorted(CONVERSIONS)} or null", field="convert")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise ValidationFailed("'force' must be a boolean", field="force")
        try:
            await asyncio.to_thread(dataset_files, dataset.path)
        except UnsafeDataset as exc:
            raise Forbidden(f"{exc}; a dataset with links inside is not staged", field="dataset_id") from None
        dest = self.destination(user, dataset, target, convert)
        created = await self._enqueue(user, dataset, target, dest, priority, convert, force)
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
                and Path(latest.dest_path).exists() and not self.is_stale(Path(latest.dest_path), target)
            ):
                return False
            row = Transfer(
                id=uuid.uuid4().hex, user=user, dataset_id=dataset.id, target=target.name, priority=priority,
                status="queued", convert=convert, source_path=str(dataset.path), dest_path=str(dest),
                total_bytes=dataset.size_bytes, bytes_done=0, resumed_from=0, server_id=self.server_id,
                created_at=utcnow(),
            )
            tx.session.add(row)
            tx.emit("staging.queued", user=user, payload=self._payload(row))
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
            return {"dataset_id": dataset.id, "target_resource": target.name if target else target_name,
                    "status": "not_staged", "progress": 0.0, "bytes_transferred": 0, "total_bytes": dataset.size_bytes,
                    "stale": False, "transfer_id": None}
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
                tx.emit("staging.cancelled", user=user, payload=self._payload(row))
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
        if not isinstance(body, dict):
            raise BadRequest("an estimate request is a JSON object", field=None)
        unknown = sorted(set(body) - {"dataset_id", "target_resource"})
        if unknown:
            raise BadRequest(f"unknown field {unknown[0]!r}; known fields: dataset_id, target_resource", field=unknown[0])
        dataset = self.dataset(body.get("dataset_id"))
        target = self.target(body.get("target_resource", "tacc_scratch"))
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
        if not dest.exists() or self.is_stale(dest, target):
            self._staged.pop((user, dataset.id), None)
            try:
                again = self.destination(user, dataset, target, convert)
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
                task = asyncio.get_running_loop().create_task(self._run(tid))
                self._tasks[tid] = task
                task.add_done_callback(lambda _t, tid=tid: self._finished(tid))

    def _finished(self, tid: str) -> None:
        self._tasks.pop(tid, None)
        self._live.pop(tid, None)
        if not self._stopping:
            asyncio.get_running_loop().create_task(self._pump())

    async def _source_checksum(self, dataset_id: str, src: Path) -> str | None:
        size, mtime = await asyncio.to_thread(_fingerprint, src)
        async with self.store.read() as session:
            rec = await session.scalar(sa.select(DatasetRecord).where(DatasetRecord.path == str(src)))
        if rec is not None and rec.size_bytes == size and rec.modified_at == mtime and rec.sha256:
            return rec.sha256
        return None

    async def _remember_checksum(self, dataset_id: str, src: Path, digest: str) -> None:
        size, mtime = await asyncio.to_thread(_fingerprint, src)
        async with self.store.write() as tx:
            rec = await tx.session.scalar(sa.select(DatasetRecord).where(DatasetRecord.path == str(src)))
            if rec is None:
                rec = DatasetRecord(dataset_id=dataset_id, path=str(src))
                tx.session.add(rec)
            if rec.size_bytes != size or rec.modified_at != mtime:
                rec.validation, rec.validated_at = None, None
            rec.size_bytes, rec.modified_at, rec.sha256 = size, mtime, digest

    async def _run(self, tid: str) -> None:
        async with self.store.write() as tx:
            row = await tx.session.get(Transfer, tid)
            if row is None or row.status != "queued":
                return
            src, dest = Path(row.source_path), Path(row.dest_path)
            part = Path(str(dest) + ".part")
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.destination(row.user, self.dataset(row.dataset_id), self.target(row.target), row.convert)
                offset = resume_offset(src, part) if row.convert is None else 0
                total = dataset_bytes(src)
            except Exception as exc:
                self._fail(tx, row, f"cannot stage: {getattr(exc, 'message', exc)}")
                return
            row.status, row.total_bytes, row.resumed_from, row.bytes_done = "running", total, offset, offset
            row.started_at = row.started_at or utcnow()
            row.error = None
            user, dataset_id, convert, target_name = row.user, row.dataset_id, row.convert, row.target
            tx.emit("staging.started", user=user, payload={**self._payload(row), "resumed_from": offset})
        live = _Live(total=total, target=target_name, done=offset, start_bytes=offset)
        self._live[tid] = live
        try:
            if convert is not None:
                copy_seconds, verify_seconds, digest = await self._convert(tid, src, part, live)
            else:
                copy_seconds, verify_seconds, digest = await self._copy(tid, dataset_id, src, part, live, offset)
            await asyncio.to_thread(_install, part, dest)
        except TransferAborted as exc:
            if exc.reason == "cancelled":
                await asyncio.to_thread(_remove, part)
                await self._end(tid, "cancelled", "staging.cancelled", error="cancelled by the user")
            return  # stopping: the row stays running and resumes at the next start
        except ChecksumMismatch as exc:
            await asyncio.to_thread(_remove, part)
            await self._end(tid, "failed", "staging.failed", error=str(exc))
            return
        except Exception as exc:
            log.exception("staging %s failed", tid)
            await asyncio.to_thread(_remove, part)
            await self._end(tid, "failed", "staging.failed", error=f"{type(exc).__name__}: {exc}")
            return
        await self._end(tid, "completed", "staging.completed", sha256=digest,
                        copy_seconds=copy_seconds, verify_seconds=verify_seconds, done=live.done)

    async def _copy(self, tid: str, dataset_id: str, src: Path, part: Path, live: _Live, offset: int) -> tuple[float, float, str]:
        known = await self._source_checksum(dataset_id, src)
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
                    hasher = await asyncio.to_thread(_hash_prefix, src, offset, live.stop)
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
            await self._remember_checksum(dataset_id, src, expected)
        if not self.verify:
            return copy_seconds, 0.0, expected
        live.phase = "verifying"
        await self._phase(tid, "verifying")
        started = time.monotonic()
        actual = await asyncio.to_thread(sha256_dataset, part, live.stop)
        verify_seconds = time.monotonic() - started
        if actual != expected:
            raise ChecksumMismatch(
                f"SHA-256 of the staged copy ({actual[:16]}…) differs from the archive's ({expected[:16]}…); "
                "the copy was discarded"
            )
        return copy_seconds, verify_seconds, expected

    async def _convert(self, tid: str, src: Path, part: Path, live: _Live) -> tuple[float, float, str]:
        started = time.monotonic()
        await self._phase(tid, "converting")
        await asyncio.to_thread(run_science, "conversion", ["uvh5", str(src), str(part)])
        copy_seconds = time.monotonic() - started
        live.done = live.total
        started = time.monotonic()
        digest = await asyncio.to_thread(sha256_file, part, live.stop)
        self._count(live, live.total)
        return copy_seconds, time.monotonic() - started, digest

    def _count(self, live: _Live, n: int) -> None:
        if self.on_bytes is not None and n > 0:
            self.on_bytes(live.target, n)

    async def _progress(self, tid: str, live: _Live, reported: int) -> int:
        done = live.done
        self._count(live, done - reported)
        async with self.store.write() as tx:
            row = await tx.session.get(Transfer, tid)
            row.bytes_done = done
            eta = live.eta()
            tx.emit("staging.progress", user=row.user, payload={
                **self._payload(row), "phase": live.phase, "rate_bytes_per_second": round(live.rate(), 1),
                "eta_seconds": None if eta is None else round(eta, 3),
            })
        return done

    async def _phase(self, tid: str, phase: str) -> None:
        async with self.store.write() as tx:
            row = await tx.session.get(Transfer, tid)
            row.status = "verifying" if phase == "verifying" else row.status
            tx.emit("staging.progress", user=row.user, payload={**self._payload(row), "phase": phase})

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
            payload = self._payload(row)
            if status == "completed":
                payload.update(sha256=sha256, copy_seconds=round(copy_seconds or 0, 6),
                               verify_seconds=round(verify_seconds or 0, 6),
                               rate_bytes_per_second=round((row.total_bytes - row.resumed_from) / copy_seconds, 1)
                               if copy_seconds else None)
            if error:
                payload["error"] = error
            tx.emit(event, user=row.user, payload=payload)
            if status == "completed":
                self._staged[(row.user, row.dataset_id)] = (Path(row.dest_path), row.target, row.convert)

    def _fail(self, tx: Any, row: Transfer, error: str) -> None:
        row.status, row.completed_at, row.error = "failed", utcnow(), error
        tx.emit("staging.failed", user=row.user, payload={**self._payload(row), "error": error})

    # -- shapes --------------------------------------------------------------------------
    @staticmethod
    def _payload(row: Transfer) -> dict[str, Any]:
        total = row.total_bytes or 0
        return {
            "transfer_id": row.id, "dataset_id": row.dataset_id, "target_resource": row.target,
            "priority": row.priority, "status": row.status, "bytes_transferred": row.bytes_done or 0,
            "total_bytes": total, "progress": round((row.bytes_done or 0) / total, 6) if total else 0.0,
        }

    def _to_json(self, row: Transfer) -> dict[str, Any]:
        doc = self._payload(row)
        live = self._live.get(row.id)
        if live is not None:
            eta = live.eta()
            doc.update(bytes_transferred=live.done, progress=round(live.done / live.total, 6) if live.total else 0.0,
                       rate_bytes_per_second=round(live.rate(), 1), eta_seconds=None if eta is None else round(eta, 3),
                       phase=live.phase)
        elif row.status == "completed" and row.copy_seconds:
            doc["rate_bytes_per_second"] = round((row.total_bytes - row.resumed_from) / row.copy_seconds, 1)
        if row.status == "completed":
            doc["progress"] = 1.0
        target = self.targets.get(row.target)
        dest = Path(row.dest_path)
        doc.update(
            convert=row.convert, sha256=row.sha256, error=row.error, resumed_from=row.resumed_from,
            staged_path=str(dest) if row.status == "completed" else None,
            stale=bool(row.status == "completed" and target is not None and self.is_stale(dest, target)),
            created_at=isoformat(row.created_at), started_at=isoformat(row.started_at),
            completed_at=isoformat(row.completed_at),
        )
        return doc


def _mtime(st: os.stat_result) -> datetime:
    # Whole microseconds: what every database keeps, so a cached stamp compares equal.
    return datetime.fromtimestamp(round(st.st_mtime, 6), timezone.utc)


def _fingerprint(src: Path) -> tuple[int, datetime]:
    """(bytes, newest mtime) of a file or a folder's files: a cached checksum holds while these do."""
    stats = [f.stat() for f in dataset_files(src)]
    newest = max(stats, key=lambda st: st.st_mtime, default=src.stat())
    return sum(st.st_size for st in stats), _mtime(newest)


def _hash_prefix(src: Path, n: int, stop: threading.Event) -> Any:
    h = hashlib.sha256()
    left = n
    with open(src, "rb", buffering=0) as fh:
        while left > 0:
            block = fh.read(min(HASH_CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
            if stop.is_set():
                raise TransferAborted("stopping")
    return h


def _remove(path: Path) -> None:
    """Delete a staged copy or its ``.part``: a file, or a folder of them."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _install(part: Path, dest: Path) -> None:
    """Give verified bytes their final name. A file replaces the old copy atomically; a folder
    cannot replace a folder, so the old one is moved aside first and removed after."""
    old = None
    if part.is_dir() and dest.exists():
        old = dest.with_name(dest.name + ".old")
        _remove(old)
        os.replace(dest, old)
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        _remove(old)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def targets_from_settings(configured: dict[str, Any], default_root: Path, purge_days: float) -> dict[str, Target]:
    """Targets from ``staging_targets`` (``{name: path}`` or ``{name: {"path", "purge_days"}}``).

    ``tacc_scratch`` always exists: ``<work_dir>/staging/tacc_scratch`` unless configured.
    """
    out = {"tacc_scratch": Target("tacc_scratch", default_root / "tacc_scratch", purge_days)}
    for name, spec in (configured or {}).items():
        if isinstance(spec, str):
            spec = {"path": spec}
        root = Path(os.path.expandvars(os.path.expanduser(spec["path"])))
        out[name] = Target(name, root, float(spec.get("purge_days", purge_days)))
    for t in out.values():
        t.root.mkdir(parents=True, exist_ok=True)
    return out
