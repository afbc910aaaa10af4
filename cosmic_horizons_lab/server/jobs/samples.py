"""Resource samples a job took of itself: ingested from its job directory, read back per job and
per node.

The executor's sampler (``executor/sampler.py``) appends lines to ``resources.jsonl``; on each
reconcile tick the new complete lines of every active job are inserted into ``job_samples`` in
one batch per tick, in the same transaction that moves ``runs.samples_offset`` past them, so a
line is stored exactly once whatever crashes (the same tailing as ``events.jsonl``:
``protocol/jobdir.read_records``). Reading back: a job's series (``GET jobs/{id}/resources``),
the newest reading of each GPU of each node (the heatmap, ``GET gpus``), and per job the GPUs
and nodes that were sampled and their mean utilisation (``GET jobs/metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.protocol import jobdir
from cosmic_horizons_lab.protocol.clock import isoformat, parse_iso, utcnow
from cosmic_horizons_lab.protocol.states import ACTIVE
from cosmic_horizons_lab.server.store.database import Store
from cosmic_horizons_lab.server.store.orm import JobRecord, JobSample, Run

log = logging.getLogger(__name__)

#: At most this many bytes of one job's samples are read per tick (a tick behind catches up next).
MAX_BYTES_PER_TICK = 16 * 1024 * 1024
KINDS = ("gpu", "cpu")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def sample_row(record: dict[str, Any], job: JobRecord) -> dict[str, Any] | None:
    """One ``resources.jsonl`` record as a ``job_samples`` row, or None when it is not a sample.

    The job writes the file, so nothing in it is trusted: a line that is not a reading is
    skipped (and counted by the offset, never read again), and text is cut to the columns.
    """
    kind = record.get("kind")
    util, memory = _number(record.get("utilization")), _number(record.get("memory_bytes"))
    if kind not in KINDS or util is None or memory is None:
        return None
    try:
        ts = parse_iso(str(record["ts"]))
    except (KeyError, TypeError, ValueError):
        return None
    uuid = record.get("gpu_uuid")
    index = record.get("gpu_index")
    total = _number(record.get("memory_total_bytes"))
    return {
        "job_id": job.id, "user": job.user, "host": str(record.get("host") or "")[:255] or "?",
        "ts": ts, "kind": kind,
        "gpu_uuid": str(uuid)[:64] if kind == "gpu" and uuid else None,
        "gpu_index": int(index) if kind == "gpu" and isinstance(index, int) and not isinstance(index, bool) else None,
        "utilization": max(0.0, util), "memory_bytes": max(0, int(memory)),
        "memory_total_bytes": int(total) if total is not None else None,
        "power_watts": _number(record.get("power_watts")),
        "temperature_c": _number(record.get("temperature_c")),
    }


def sample_to_json(row: JobSample) -> dict[str, Any]:
    return {
        "id": row.id, "ts": isoformat(row.ts), "host": row.host, "kind": row.kind,
        "uuid": row.gpu_uuid, "index": row.gpu_index, "utilization": row.utilization,
        "memory_bytes": row.memory_bytes, "memory_total_bytes": row.memory_total_bytes,
        "power_watts": row.power_watts, "temperature_c": row.temperature_c,
    }


class JobSamples:
    """Ingests each job's ``resources.jsonl`` into ``job_samples`` and answers queries on it."""

    def __init__(self, store: Store, work_dir: Path) -> None:
        self.store = store
        self.work_dir = Path(work_dir)

    # -- ingestion ---------------------------------------------------------------------------
    def _read(self, job: JobRecord, offset: int) -> tuple[list[dict[str, Any]], int]:
        path = jobdir.job_dir(self.work_dir, job.user, job.id)
        rows: list[dict[str, Any]] = []
        start = offset
        while offset - start < MAX_BYTES_PER_TICK:
            records, new = jobdir.read_records(path, offset, jobdir.RESOURCES_FILE)
            if new == offset:
                break
            rows.extend(r for r in (sample_row(rec, job) for rec in records) if r is not None)
            offset = new
        return rows, offset

    async def ingest(self, active: Iterable[tuple[JobRecord, Run]]) -> int:
        """Store the samples the given jobs' current runs appended since the last tick.

        Returns how many were stored. Called by the reconciler after its poll, before it moves
        any job to a terminal state: a job that ended has written its last sample, and that
        sample is in the store before anything (costs, metrics) reads the job as ended.
        """
        pairs = [(job, run) for job, run in active]
        if not pairs:
            return 0
        starts = {run.id: run.samples_offset for _, run in pairs}
        retried = [run.job_id for _, run in pairs if run.attempt > 1 and run.samples_offset == 0]
        if retried:
            # A retry appends to the same file: it starts where the earlier attempts were read to.
            async with self.store.read() as session:
                earlier = dict((await session.execute(
                    sa.select(Run.job_id, sa.func.max(Run.samples_offset)).where(Run.job_id.in_(retried))
                    .group_by(Run.job_id)
                )).all())
            for _, run in pairs:
                if run.job_id in earlier and run.samples_offset == 0:
                    starts[run.id] = int(earlier[run.job_id] or 0)
        found = await asyncio.to_thread(lambda: [(run, *self._read(job, starts[run.id])) for job, run in pairs])
        moved = [(run.id, run.samples_offset, rows, offset) for run, rows, offset in found if offset != run.samples_offset]
        if not moved:
            return 0
        stored = 0
        async with self.store.write() as tx:
            batch: list[dict[str, Any]] = []
            for run_id, was, rows, offset in moved:
                run = await tx.session.get(Run, run_id)
                if run is None or run.samples_offset != was:
                    continue  # someone else took these lines meanwhile
                run.samples_offset = offset
                batch.extend(rows)
            if batch:
                await tx.session.execute(sa.insert(JobSample), batch)
                stored = len(batch)
        return stored

    # -- reading ------------------------------------------------------------------------------
    async def series(self, job_id: str, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The job's samples with an id above ``after``, oldest first, and the cursor to go on from."""
        async with self.store.read() as session:
            rows = (await session.scalars(
                sa.select(JobSample).where(JobSample.job_id == job_id, JobSample.id > after)
                .order_by(JobSample.id).limit(limit)
            )).all()
        return [sample_to_json(r) for r in rows], (rows[-1].id if rows else after)

    async def latest_by_node(self, user: str, seconds: float) -> list[dict[str, Any]]:
        """Each node's GPUs (or CPU readings) as last sampled within ``seconds``, with their job.

        ``held``: a job that is still active (anyone's) holds it. ``job_id`` and ``job_status``:
        the job last sampled on it, shown to its owner only.
        """
        since = utcnow() - timedelta(seconds=seconds)
        async with self.store.read() as session:
            newest = (
                sa.select(sa.func.max(JobSample.id).label("id"))
                .where(JobSample.ts >= since)
                .group_by(JobSample.host, sa.func.coalesce(JobSample.gpu_uuid, JobSample.job_id))
                .subquery()
            )
            rows = (await session.execute(
                sa.select(JobSample, JobRecord.status)
                .join(newest, newest.c.id == JobSample.id)
                .join(JobRecord, JobRecord.id == JobSample.job_id)
                .order_by(JobSample.host, JobSample.gpu_index, JobSample.job_id)
            )).all()
        nodes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for sample, status in rows:
            entry = sample_to_json(sample)
            entry.pop("id")
            mine = sample.user == user
            entry.update(job_id=sample.job_id if mine else None, job_status=status if mine else None,
                         held=status in ACTIVE)
            nodes[sample.host].append(entry)
        return [{"host": host, "source": "jobs", "gpus": gpus} for host, gpus in sorted(nodes.items())]

    async def usage_by_job(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Per job: the GPUs and nodes sampled, and the mean GPU utilisation of its samples.

        Only jobs with GPU samples appear: GPU-hours come from the GPUs a job really held
        (``gpus``), which a CPU job has none of.
        """
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(job_ids), 500):  # bounded IN lists
            chunk = job_ids[i:i + 500]
            async with self.store.read() as session:
                rows = (await session.execute(
                    sa.select(
                        JobSample.job_id,
                        sa.func.count(sa.distinct(JobSample.host + ":" + JobSample.gpu_uuid)),
                        sa.func.count(sa.distinct(JobSample.host)),
                        sa.func.avg(JobSample.utilization),
                        sa.func.count(),
                    ).where(JobSample.job_id.in_(chunk), JobSample.kind == "gpu").group_by(JobSample.job_id)
                )).all()
            for job_id, gpus, nodes, mean, n in rows:
                out[job_id] = {"gpus": int(gpus), "nodes": int(nodes), "utilization": float(mean), "samples": int(n)}
        return out
