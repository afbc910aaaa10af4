"""The dataset registry: what a ``dataset_id`` names and where its data lies.

A dataset's id is its file (or folder) name in ``datasets_dir`` without the
extension. Ids are looked up, never joined into paths, so a request cannot
reach outside the configured roots. Beside the archive, every server has the
demo observation shipped in the package (``VLA.TDEM0003.1src``) and the
synthetic presets (``SIM.<name>``), generated on first use into a cache under
the work directory (shared with compute nodes) — by the job itself when it
runs first, so the server never blocks on it.
"""

from __future__ import annotations

import os
import stat
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
    modified_at: datetime | None
    description: str = ""

    def to_json(self, shape: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "source": self.source,
            "modified_at": isoformat(self.modified_at),
            "description": self.description,
            "shape": shape,
        }

    def ref(self) -> dict[str, Any]:
        """What the executor gets in ``job.json`` (``simulate``: generate the file if it is missing)."""
        ref: dict[str, Any] = {"id": self.id, "path": str(self.path), "format": self.format}
        if self.source == "simulated":
            ref["simulate"] = self.id
        return ref


def _split(name: str) -> tuple[str, str]:
    lower = name.lower()
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], fmt
    stem, _, ext = name.rpartition(".")
    return (stem, ext.lower() or "unknown") if stem else (name, "unknown")


class UnsafeDataset(ValueError):
    """A folder dataset holds a symbolic link: following it could lead out of the archive."""


def dataset_files(path: Path) -> list[Path]:
    """The files a dataset is made of, in a stable order: the file itself, or every file in its folder.

    A Measurement Set is a folder of casacore tables; staging copies and
    checksums it file by file, in this order (sorted by relative path, so two
    copies list alike). A symbolic link inside the folder raises
    :class:`UnsafeDataset` rather than be followed.
    """
    if not path.is_dir():
        return [path]
    top = str(path)
    rels: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        prefix = os.path.relpath(dirpath, top)
        prefix = "" if prefix == "." else prefix + "/"
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise UnsafeDataset(f"{prefix}{name} in {path.name} is a symbolic link")
        rels.extend(prefix + name for name in filenames)
    return [path / rel for rel in sorted(rels)]


def dataset_bytes(path: Path) -> int:
    """Bytes in a dataset's files (links inside a folder are not followed, nor counted)."""
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def _stat_dataset(ds_id: str, path: Path, fmt: str, source: str, description: str = "") -> Dataset:
    exists = path.exists()
    return Dataset(
        id=ds_id,
        path=path,
        format=fmt,
        size_bytes=dataset_bytes(path) if exists else 0,
        source=source,
        modified_at=datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) if exists else None,
        description=description,
    )


class DatasetRegistry:
    """Datasets in ``datasets_dir`` (re-read when the folder changes), the demo and the presets."""

    def __init__(self, datasets_dir: Path, simulated_dir: Path | None = None) -> None:
        self.root = Path(datasets_dir)
        self.simulated_dir = Path(simulated_dir) if simulated_dir else None
        self._cache: dict[str, Dataset] = {}
        self._stamp: float | None = None
        self._builtins: dict[str, tuple[Path, str, str, str]] | None = None
        self._shapes: dict[tuple[str, int, float], dict[str, Any] | None] = {}

    def _builtin_entries(self) -> dict[str, tuple[Path, str, str, str]]:
        """id → (path, format, source, description) of what ships with the package."""
        if self._builtins is None:
            from .data import DEMO_DATASETS

            entries = {ds_id: (path, "uvfits", "demo", "VLA CASA-tutorial observation (see data/PROVENANCE.md)")
                       for ds_id, path in DEMO_DATASETS.items()}
            if self.simulated_dir is not None:
                from .executor.simulate import SIM_PRESETS

                for ds_id, preset in SIM_PRESETS.items():
                    entries[ds_id] = (self.simulated_dir / f"{ds_id}.uvfits", "uvfits", "simulated", preset["description"])
            self._builtins = entries
        return self._builtins

    def _builtin(self, ds_id: str) -> Dataset | None:
        entry = self._builtin_entries().get(ds_id)
        return _stat_dataset(ds_id, *entry) if entry else None

    def describe(self, dataset: Dataset) -> dict[str, Any] | None:
        """The dataset's shape read from the data (cached; blocking: call from a thread).

        None for what cannot be opened, and for a synthetic preset not generated yet.
        """
        if not dataset.path.exists():
            return None
        key = (str(dataset.path), dataset.size_bytes, dataset.modified_at.timestamp() if dataset.modified_at else 0.0)
        if key not in self._shapes:
            from .executor.visibilities import describe_dataset

            try:
                self._shapes[key] = describe_dataset(dataset.path).get("shape")
            except Exception:  # not a format we can open: listed, without a shape
                self._shapes[key] = None
        return self._shapes[key]

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
                    size_bytes=dataset_bytes(path),
                    source="archive",
                    modified_at=datetime.fromtimestamp(st.st_mtime, timezone.utc),
                ),
            )
        self._cache, self._stamp = found, stamp
        return found

    def list(self) -> list[Dataset]:
        archive = self._scan()
        extra = [self._builtin(i) for i in self._builtin_entries() if i not in archive]
        return list(archive.values()) + [d for d in extra if d is not None]

    def get(self, dataset_id: str) -> Dataset | None:
        return self._scan().get(dataset_id) or self._builtin(dataset_id)
