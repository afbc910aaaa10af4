"""The dataset registry: what a ``dataset_id`` names and where its data lies.

A dataset's id is its file (or folder) name in ``datasets_dir`` without the
extension. Ids are looked up, never joined into paths, so a request cannot
reach outside the configured roots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .clock import isoformat

#: File extensions we know, longest first, and the format each means.
FORMATS: dict[str, str] = {
    ".uvfits": "uvfits",
    ".uvh5": "uvh5",
    ".ms": "measurement_set",
    ".fits": "fits",
    ".fit": "fits",
    ".h5": "hdf5",
    ".npz": "npz",
    ".csv": "csv",
}


@dataclass(frozen=True)
class Dataset:
    id: str
    path: Path
    format: str
    size_bytes: int
    source: str
    modified_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "source": self.source,
            "modified_at": isoformat(self.modified_at),
        }

    def ref(self) -> dict[str, Any]:
        """What the executor gets in ``job.json``."""
        return {"id": self.id, "path": str(self.path), "format": self.format}


def _split(name: str) -> tuple[str, str]:
    lower = name.lower()
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], fmt
    stem, _, ext = name.rpartition(".")
    return (stem, ext.lower() or "unknown") if stem else (name, "unknown")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class DatasetRegistry:
    """Datasets in ``datasets_dir``, re-read when the folder changes."""

    def __init__(self, datasets_dir: Path) -> None:
        self.root = Path(datasets_dir)
        self._cache: dict[str, Dataset] = {}
        self._stamp: float | None = None

    def _scan(self) -> dict[str, Dataset]:
        try:
            stamp = self.root.stat().st_mtime
        except FileNotFoundError:
            return {}
        if stamp == self._stamp:
            return self._cache
        found: dict[str, Dataset] = {}
        root = self.root.resolve()
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            # A symlink that leads out of the archive is not a dataset of ours.
            if not path.resolve().is_relative_to(root):
                continue
            ds_id, fmt = _split(entry.name)
            st = path.stat()
            found.setdefault(
                ds_id,
                Dataset(
                    id=ds_id,
                    path=path,
                    format=fmt,
                    size_bytes=_size(path),
                    source="archive",
                    modified_at=datetime.fromtimestamp(st.st_mtime, timezone.utc),
                ),
            )
        self._cache, self._stamp = found, stamp
        return found

    def list(self) -> list[Dataset]:
        return list(self._scan().values())

    def get(self, dataset_id: str) -> Dataset | None:
        return self._scan().get(dataset_id)
