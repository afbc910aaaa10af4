"""The sky: job footprints and coverage (``coverage.py``), annotations, snapshots, and what their
requests may say (``requests.py``). :class:`Sky` holds the three services the handlers call."""

from __future__ import annotations

from pathlib import Path

from cosmic_horizons_lab.server.datasets import DatasetRegistry
from cosmic_horizons_lab.server.science_worker import run_science
from cosmic_horizons_lab.server.sky.annotations import Annotations, GetJob
from cosmic_horizons_lab.server.sky.coverage import Coverage, Worker
from cosmic_horizons_lab.server.sky.snapshots import Snapshots
from cosmic_horizons_lab.server.store.database import Store


class Sky:
    def __init__(self, store: Store, datasets: DatasetRegistry, work_path: Path, get_job: GetJob,
                 worker: Worker = run_science) -> None:
        self.coverage = Coverage(store, datasets, work_path, worker)
        self.annotations = Annotations(store, get_job, lambda request: self.coverage.call_worker("regions", request))
        self.snapshots = Snapshots(store)


__all__ = ["Annotations", "Coverage", "Sky", "Snapshots"]
