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

import asyncio
import os
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.protocol.clock import isoformat
from cosmic_horizons_lab.server.science_worker import ScienceUnavailable, run_science
from cosmic_horizons_lab.protocol.datasets import (UnsafeDataset, dataset_bytes, dataset_files,  # noqa: F401
                                                   split_name)

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


def _stat_dataset(ds_id: str, path: Path, fmt: str, source: str, description: str = "") -> Dataset:
    from cosmic_horizons_lab.data import SIMULATED_BYTES

    exists = path.exists()
    return Dataset(
        id=ds_id,
        path=path,
        format=fmt,
        # A preset not generated yet: the size it will have (a listing of 0 bytes misled users).
        size_bytes=dataset_bytes(path) if exists else SIMULATED_BYTES.get(ds_id, 0),
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
        self._describe_lock = threading.Lock()

    def _builtin_entries(self) -> dict[str, tuple[Path, str, str, str]]:
        """id → (path, format, source, description) of what ships with the package."""
        if self._builtins is None:
            from cosmic_horizons_lab.data import DEMO_DATASETS, SIMULATED_DATASETS

            entries = {ds_id: (path, "uvfits", "demo", "VLA CASA-tutorial observation (see data/PROVENANCE.md)")
                       for ds_id, path in DEMO_DATASETS.items()}
            if self.simulated_dir is not None:
                for ds_id, description in SIMULATED_DATASETS.items():
                    entries[ds_id] = (self.simulated_dir / f"{ds_id}.uvfits", "uvfits", "simulated", description)
            self._builtins = entries
        return self._builtins

    def _builtin(self, ds_id: str) -> Dataset | None:
        entry = self._builtin_entries().get(ds_id)
        return _stat_dataset(ds_id, *entry) if entry else None

    def describe(self, dataset: Dataset) -> dict[str, Any] | None:
        """The dataset's shape read from the data (cached; blocking: call from a thread)."""
        return self.describe_many([dataset])[0]

    def warm(self) -> None:
        """Read every listed dataset's shape now (blocking), so the first listing is served from
        cache; in a worker that yields the CPU (nobody waits on it yet)."""
        self.describe_many(self.list(), background=True)

    def describe_many(self, datasets: list[Dataset], *, background: bool = False) -> list[dict[str, Any] | None]:
        """Shapes of several datasets, those not cached read by one worker process (blocking).

        None for what cannot be opened. The demo's and the presets' shapes ship with the package
        (a preset's is listed before it is generated), so they need no worker. One reader at a
        time: a listing that comes while the start-up warm-up reads waits for it
        and is then served from the cache, rather than starting a second worker.
        """
        with self._describe_lock:
            return self._describe_many(datasets, background)

    def _describe_many(self, datasets: list[Dataset], background: bool) -> list[dict[str, Any] | None]:
        keys = [(str(d.path), d.size_bytes, d.modified_at.timestamp() if d.modified_at else 0.0)
                for d in datasets]
        for key, d in zip(keys, datasets):
            if key not in self._shapes and (shipped := self._shipped_shape(d)) is not None:
                self._shapes[key] = shipped
        todo = [(k, d) for k, d in zip(keys, datasets) if k not in self._shapes and d.path.exists()]
        if todo:
            try:
                shapes = run_science("inspection", ["describe", *(str(d.path) for _, d in todo)],
                                     background=background)
            except ScienceUnavailable:
                shapes = [None] * len(todo)
            for (key, _), shape in zip(todo, shapes):
                self._shapes[key] = shape
        return [self._shapes.get(k) for k in keys]

    def _shipped_shape(self, dataset: Dataset) -> dict[str, Any] | None:
        """The shape the package ships for the demo or a preset (``data.BUILTIN_SHAPES``), where
        ``dataset`` is that very file: a preset's only while its file has the size generation
        writes, or is not generated yet (a listing shows what a job will read)."""
        from cosmic_horizons_lab.data import BUILTIN_SHAPES, SIMULATED_BYTES

        entry = self._builtin_entries().get(dataset.id)
        if entry is None or dataset.source == "archive" or dataset.path != entry[0]:
            return None
        if dataset.source == "simulated" and dataset.size_bytes != SIMULATED_BYTES.get(dataset.id):
            return None
        shape = BUILTIN_SHAPES.get(dataset.id)
        return dict(shape) if shape is not None else None

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
            ds_id, fmt = split_name(entry.name)
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

    def home(self, dataset: Dataset) -> Path:
        """The folder ``dataset`` must resolve inside: the archive, the package's data folder
        (the demo) or the presets' cache. A dataset whose path leads out of it is not ours."""
        if dataset.source == "demo":
            from cosmic_horizons_lab.data import DATA_DIR

            return DATA_DIR.resolve()
        if dataset.source == "simulated" and self.simulated_dir is not None:
            return self.simulated_dir.resolve()
        return self.root.resolve()

    async def materialize(self, dataset: Dataset) -> None:
        """Generate a synthetic preset no job has generated yet (staging needs the file).

        In a child process, the executor's ``--materialize``, as a job would: the server never
        imports the science. The file appears whole or not at all.
        """
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cosmic_horizons_lab.executor", "--materialize", dataset.id, str(dataset.path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            raise RuntimeError(last[0][:500])

    def list(self) -> list[Dataset]:
        archive = self._scan()
        extra = [self._builtin(i) for i in self._builtin_entries() if i not in archive]
        return list(archive.values()) + [d for d in extra if d is not None]

    def get(self, dataset_id: str) -> Dataset | None:
        return self._scan().get(dataset_id) or self._builtin(dataset_id)
