"""A dataset's SHA-256, and when a cached one of an archive dataset still holds.

Why a cache: every staged copy is verified against the archive's checksum,
and reading a 100 GB archive file once more per transfer would double the
cost of staging. So the archive side is hashed while it is copied, and the
digest kept in ``datasets`` under the dataset's (bytes, newest mtime)
fingerprint; while those hold, the next transfer trusts it.

A folder dataset (a Measurement Set) has no bytes of its own: its checksum
is that of a manifest of its files. The copy engine builds that manifest as
it copies and the verification builds it as it reads the copy back, so its
format is defined once, here. The SHA-256 of a single file is
:mod:`cosmic_horizons_lab.protocol.checksums`'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from cosmic_horizons_lab.protocol.checksums import sha256_file
from cosmic_horizons_lab.server.datasets import dataset_files
from cosmic_horizons_lab.server.store.database import Store
from cosmic_horizons_lab.server.store.orm import DatasetRecord


class ChecksumMismatch(Exception):
    """The staged copy's bytes are not the archive's: the transfer fails and the copy is discarded."""


def manifest_sha256(entries: Iterable[tuple[str, int, str]]) -> str:
    """SHA-256 of a folder's manifest, from (relative path, bytes, SHA-256) per file in path order.

    The manifest is one ``<sha256>  <size>  <relative path>`` line per file,
    sorted by path (as ``dataset_files`` lists them): a changed, missing,
    extra or renamed file changes it.
    """
    manifest = hashlib.sha256()
    for rel, size, digest in entries:
        manifest.update(f"{digest}  {size}  {rel}\n".encode())
    return manifest.hexdigest()


def sha256_dataset(path: Path, interrupt: Callable[[], object] | None = None) -> str:
    """SHA-256 of a file; of a folder, that of its manifest (see :func:`manifest_sha256`).

    ``interrupt`` is called between blocks and raises to abandon the hash.
    Blocking: run it in a thread.
    """
    if not path.is_dir():
        return sha256_file(path, interrupt=interrupt)
    return manifest_sha256(
        (f.relative_to(path).as_posix(), f.stat().st_size, sha256_file(f, interrupt=interrupt))
        for f in dataset_files(path)
    )


def mtime_stamp(st: os.stat_result) -> datetime:
    """The modification time a ``datasets`` row keeps for a file."""
    # Whole microseconds: what every database keeps, so a cached stamp compares equal.
    return datetime.fromtimestamp(round(st.st_mtime, 6), timezone.utc)


def fingerprint(src: Path) -> tuple[int, datetime]:
    """(bytes, newest mtime) of a file or a folder's files: a cached checksum holds while these do."""
    stats = [f.stat() for f in dataset_files(src)]
    newest = max(stats, key=lambda st: st.st_mtime, default=src.stat())
    return sum(st.st_size for st in stats), mtime_stamp(newest)


async def cached_checksum(store: Store, src: Path) -> str | None:
    """The archive dataset's SHA-256 if one is cached and its fingerprint still matches."""
    size, mtime = await asyncio.to_thread(fingerprint, src)
    async with store.read() as session:
        rec = await session.scalar(sa.select(DatasetRecord).where(DatasetRecord.path == str(src)))
    if rec is not None and rec.size_bytes == size and rec.modified_at == mtime and rec.sha256:
        return rec.sha256
    return None


async def remember_checksum(store: Store, dataset_id: str, src: Path, digest: str) -> None:
    """Cache the archive dataset's SHA-256 under its current fingerprint.

    A changed fingerprint also drops the cached validation report: it was of other bytes.
    """
    size, mtime = await asyncio.to_thread(fingerprint, src)
    async with store.write() as tx:
        rec = await tx.session.scalar(sa.select(DatasetRecord).where(DatasetRecord.path == str(src)))
        if rec is None:
            rec = DatasetRecord(dataset_id=dataset_id, path=str(src))
            tx.session.add(rec)
        if rec.size_bytes != size or rec.modified_at != mtime:
            rec.validation, rec.validated_at = None, None
        rec.size_bytes, rec.modified_at, rec.sha256 = size, mtime, digest
