"""The copy engine: a dataset's bytes from the archive into a ``.part``, paced, durable, resumable.

Everything here is blocking and runs in threads the staging service starts:
no database, no event loop. A copy and the service share only a
:class:`LiveCopy`, whose counters the copy writes and whose flags (cancel,
stop) it reads between chunks, so neither flag waits for a whole file.

Why the care: scratch filesystems are shared (hence optional pacing), a
server may die mid-copy (hence resuming from what a ``.part`` already holds,
and fsync/syncfs before the final name is given), and a Measurement Set is
thousands of small files (hence in-kernel copies and several threads).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.protocol.checksums import sha256_hasher
from cosmic_horizons_lab.server.datasets import UnsafeDataset, dataset_files
from cosmic_horizons_lab.server.staging.checksums import manifest_sha256


class TransferAborted(Exception):
    """The copy thread stopped on request: ``reason`` is "cancelled" or "stopping"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class LiveCopy:
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

    def check_stop(self) -> None:
        """Raise :class:`TransferAborted` ("stopping") once the server stops: a hash's ``interrupt``."""
        if self.stop.is_set():
            raise TransferAborted("stopping")


def copy_chunks(
    src: Path, part: Path, live: LiveCopy, *, offset: int, chunk: int, max_rate: float,
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


def copy_tree(
    src: Path, part: Path, live: LiveCopy, *, chunk: int, max_rate: float, hash_source: bool, workers: int = 4,
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
            hasher = sha256_hasher(f, limit=offset, interrupt=live.check_stop) if offset else hashlib.sha256()
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
    return manifest_sha256((rel, *digests[rel]) for rel in rels)  # sorted, as dataset_files lists them


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


def remove(path: Path) -> None:
    """Delete a staged copy or its ``.part``: a file, or a folder of them."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def install(part: Path, dest: Path) -> None:
    """Give verified bytes their final name. A file replaces the old copy atomically; a folder
    cannot replace a folder, so the old one is moved aside first and removed after."""
    old = None
    if part.is_dir() and dest.exists():
        old = dest.with_name(dest.name + ".old")
        remove(old)
        os.replace(dest, old)
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        remove(old)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
