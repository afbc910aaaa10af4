"""SHA-256 of a file: the one implementation every layer uses.

Why here: a checksum the server reports (a job's outputs, a staged dataset)
is compared with one computed elsewhere, so there is one way to compute it,
and ``protocol`` is the standard-library layer every other layer may import.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Bytes read per block: a multi-GB dataset then costs few system calls.
HASH_CHUNK = 8 << 20


def sha256_hasher(path: Path, *, limit: int | None = None, interrupt: Callable[[], object] | None = None) -> Any:
    """A SHA-256 object fed ``path``'s bytes (only its first ``limit`` if given), left open.

    Open, because a copy resumed from a ``.part`` hashes the bytes already
    there and then goes on feeding the hasher what it copies. ``interrupt``
    is called after each block and raises to abandon the hash, so a stopping
    server does not wait for a whole file to be read. Blocking: run it in a thread.
    """
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
            if interrupt is not None:
                interrupt()
    return h


def sha256_file(path: Path, *, limit: int | None = None, interrupt: Callable[[], object] | None = None) -> str:
    """Hex SHA-256 of a file (or of its first ``limit`` bytes); see :func:`sha256_hasher`."""
    return sha256_hasher(path, limit=limit, interrupt=interrupt).hexdigest()
