"""What a dataset is and how it should be laid out for GPU processing (``GET jobs/dataset/{id}/
validate`` and ``…/optimize``).

Validation reads the data (format and shape, then the full arrays for flag and outlier
statistics) in the science worker, never in the server (:mod:`.science_worker`), and is
cached per archive file in the ``datasets`` table, keyed by size and mtime, because reading
a large file is expensive.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.protocol.clock import isoformat, utcnow
from cosmic_horizons_lab.protocol.datasets import CONVERTED_CHANNEL_CHUNK, VISIBILITY_FORMATS
from cosmic_horizons_lab.server.datasets import Dataset, DatasetRegistry
from cosmic_horizons_lab.server.errors import NotFound, ValidationFailed
from cosmic_horizons_lab.server.science_worker import ScienceUnavailable, run_science
from cosmic_horizons_lab.server.store.database import Store
from cosmic_horizons_lab.server.store.orm import DatasetRecord


class DatasetInspector:
    """Validation (cached) and layout recommendations for archive datasets."""

    def __init__(self, store: Store, datasets: DatasetRegistry) -> None:
        self.store = store
        self.datasets = datasets

    def _dataset(self, dataset_id: str) -> Dataset:
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            raise NotFound(f"unknown dataset {dataset_id!r} (GET datasets lists them)", field="dataset_id")
        return dataset

    async def validate(self, dataset_id: str) -> dict[str, Any]:
        dataset = self._dataset(dataset_id)
        from cosmic_horizons_lab.server.staging.checksums import mtime_stamp

        st = await asyncio.to_thread(dataset.path.stat)
        async with self.store.read() as session:
            rec = await session.scalar(sa.select(DatasetRecord).where(DatasetRecord.path == str(dataset.path)))
        if rec is not None and rec.validation and rec.size_bytes == st.st_size and rec.modified_at == mtime_stamp(st):
            return {"dataset_id": dataset.id, **rec.validation, "checked_at": isoformat(rec.validated_at), "cached": True}
        try:
            report = (await asyncio.to_thread(run_science, "inspection", ["validate", str(dataset.path)]))[0]
        except ScienceUnavailable as exc:
            raise ValidationFailed(str(exc), field="dataset_id") from exc
        now = utcnow()
        async with self.store.write() as tx:
            rec = await tx.session.scalar(sa.select(DatasetRecord).where(DatasetRecord.path == str(dataset.path)))
            if rec is None:
                rec = DatasetRecord(dataset_id=dataset.id, path=str(dataset.path))
                tx.session.add(rec)
            elif rec.size_bytes != st.st_size or rec.modified_at != mtime_stamp(st):
                rec.sha256 = None  # the file changed: its checksum is no longer known
            rec.size_bytes, rec.modified_at, rec.validation, rec.validated_at = st.st_size, mtime_stamp(st), report, now
        return {"dataset_id": dataset.id, **report, "checked_at": isoformat(now), "cached": False}

    async def layout(self, dataset_id: str) -> dict[str, Any]:
        """Concrete layout changes for GPU processing, each with its reason and how to get it."""
        report = await self.validate(dataset_id)
        fmt, shape = report.get("format"), report.get("shape") or {}
        recs: list[dict[str, Any]] = []
        convertible = fmt in VISIBILITY_FORMATS
        if fmt in VISIBILITY_FORMATS - {"uvh5"}:
            recs.append({
                "id": "convert_uvh5", "title": "Convert to UVH5 (HDF5, chunked)",
                "reason": f"{fmt} has no chunked random access: every pass over one baseline or channel range "
                          "reads the whole file; UVH5 lets pyuvdata read selections and streams to the GPU in chunks",
                "action": "stage with convert='uvh5'",
            })
        if report.get("blt_order") not in (None, "baseline-time"):
            recs.append({
                "id": "baseline_time_order", "title": "Reorder rows baseline-time",
                "reason": f"rows are {report['blt_order']}: flagging and calibration read one baseline's "
                          "time × channel plane at a time, which baseline-time order makes contiguous",
                "action": "stage with convert='uvh5' (reorders to baseline-time)",
            })
        if shape.get("channels"):
            chunk = [shape.get("times", 1), min(shape["channels"], CONVERTED_CHANNEL_CHUNK), shape.get("polarizations", 1)]
            recs.append({
                "id": "channel_chunking", "title": f"Chunk channels by {chunk[1]}",
                "reason": f"{shape['channels']} channels: chunks of (all {chunk[0]} times, {chunk[1]} channels, "
                          f"{chunk[2]} pols) per baseline match SumThreshold's windows and fit GPU memory",
                "action": "stage with convert='uvh5' (writes these chunks)", "chunks": chunk,
            })
        if report.get("spectral_windows", 1) > 1:
            recs.append({"id": "split_spws", "title": "One spectral window per dataset",
                         "reason": "the agents process the first spectral window only", "action": "split before upload"})
        staging = {"dataset_id": report["dataset_id"], "target_resource": "tacc_scratch", "convert": "uvh5"}
        return {
            "dataset_id": report["dataset_id"], "format": fmt, "size_bytes": report.get("size_bytes"),
            "blt_order": report.get("blt_order"), "recommendations": recs,
            "staging_request": staging if convertible and recs else None,
        }
