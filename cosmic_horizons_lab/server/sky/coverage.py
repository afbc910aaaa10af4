"""Where the user's jobs looked: each job's footprint, kept in the store, and their union as a MOC.

A footprint is read once per job status by the science worker (the server imports no astropy):
from the job's image — its own FITS output, else its parents' (an AnomalyDetection stage), else a
FITS dataset — as the image's extent; or else from its visibilities as the phase centre and the
primary beam (its own dataset's, else its parents'). A job's footprint is read when it ends: the
transition hook (:meth:`Coverage.on_transition`) only notes the job in the transition's
transaction, and after the commit a background task reads it through the worker (a child process,
seconds), so the transition never waits on it and the coverage is ready when the sky is asked for.
The first request stays the fallback: a job without a footprint for its current status (one that
ended before this server started, or whose read failed) is read then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from cosmic_horizons_lab.protocol import jobdir
from cosmic_horizons_lab.protocol.clock import isoformat, utcnow
from cosmic_horizons_lab.protocol.states import is_terminal
from cosmic_horizons_lab.server.api.requests import job_query
from cosmic_horizons_lab.server.background import stop_task
from cosmic_horizons_lab.server.datasets import DatasetRegistry
from cosmic_horizons_lab.server.errors import BadRequest, LabError
from cosmic_horizons_lab.server.science_worker import ScienceUnavailable, run_science
from cosmic_horizons_lab.server.store.database import Store, Tx
from cosmic_horizons_lab.server.store.orm import JobRecord, SkyFootprint

#: Image outputs in the order a job's picture is chosen (the same order as the notebook's job.image()).
IMAGE_NAMES = ("restored.fits", "image.fits", "dirty.fits")
#: MOC order: 10 is cells of 3.4′, finer than any primary beam we image; 0..14 may be asked for.
DEFAULT_ORDER = 10
MAX_ORDER = 14
#: Query parameters of sky/coverage and sky/footprints.
COVERAGE_PARAMS = ("agent", "status", "from_date", "to_date", "dataset_id", "order")


class Worker(Protocol):
    """How the sky reaches the science (``run_science``): a module, its arguments, and whether
    anyone waits on the answer."""

    def __call__(self, module: str, args: list[str], *, background: bool = False) -> Any: ...


log = logging.getLogger(__name__)


class SkyUnavailable(LabError):
    """The science worker could not read the sky (no science extra, or it failed): 503."""

    status = 503
    code = "science_unavailable"


@dataclass(frozen=True)
class FootprintQuery:
    conds: tuple[Any, ...]
    order: int


def footprint_query(user: str, query: dict[str, str]) -> FootprintQuery:
    """``agent``, ``status`` (comma-separated), ``from_date``, ``to_date``, ``dataset_id``, ``order``: 400 naming a bad one."""
    # Other parameters are ignored, as by jobs/search: JupyterLab adds a cache-buster to every GET.
    raw_order = query.get("order")
    order = DEFAULT_ORDER
    if raw_order is not None:
        if not raw_order.isascii() or not raw_order.isdigit() or int(raw_order) > MAX_ORDER:
            raise BadRequest(f"'order' must be an integer from 0 to {MAX_ORDER}", field="order")
        order = int(raw_order)
    q = job_query({k: v for k, v in query.items() if k != "order"})
    conds = [JobRecord.user == user, *(getattr(JobRecord, k) == v for k, v in q.equals.items()), *q.created]
    if q.statuses is not None:
        conds.append(JobRecord.status.in_(q.statuses))
    return FootprintQuery(tuple(conds), order)


def footprint_to_json(job: JobRecord, fp: SkyFootprint | None) -> dict[str, Any]:
    return {
        "job_id": job.id, "agent": job.agent, "status": job.status, "dataset_id": job.dataset_id,
        "created_at": isoformat(job.created_at), "basis": fp.basis if fp else "none",
        "ra_deg": fp.ra_deg if fp else None, "dec_deg": fp.dec_deg if fp else None,
        "radius_deg": fp.radius_deg if fp else None, "image": fp.image if fp else None,
    }


class Coverage:
    """Footprints of a user's jobs and the MOC of their union."""

    def __init__(self, store: Store, datasets: DatasetRegistry, work_path: Path,
                 worker: Worker = run_science) -> None:
        self.store = store
        self.datasets = datasets
        self.work_path = work_path
        self.worker = worker
        self._mocs: dict[tuple[Any, ...], dict[str, list[int]]] = {}
        self._lock = asyncio.Lock()
        #: ended jobs whose footprint is owed: user → job ids (filled after each commit)
        self._owed: dict[str, set[str]] = {}
        self._task: asyncio.Task | None = None

    # -- at job end: read in the background --------------------------------------------------
    def on_transition(self, tx: Tx, job: JobRecord, previous: str) -> None:
        """Owe the footprint of a job that ended (orchestrator transition hook).

        Nothing is read here: the job is noted in the transaction, and after its commit a
        background task reads it, so the transition is not held up by the worker.
        """
        if not is_terminal(job.status):
            return
        pending: list[tuple[str, str]] = tx.session.info.setdefault("sky_footprints_pending", [])
        if not pending:
            sa.event.listen(tx.session.sync_session, "after_commit", self._committed, once=True)
        pending.append((job.user, job.id))

    def _committed(self, session: Any) -> None:
        for user, job_id in session.info.pop("sky_footprints_pending", []):
            self._owed.setdefault(user, set()).add(job_id)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the first sky request reads them
            return
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._read_owed())

    async def _read_owed(self) -> None:
        """Read the owed footprints, a batch per user and worker call, until none is owed."""
        await asyncio.sleep(0.05)  # jobs ending together share one worker start
        while self._owed:
            owed, self._owed = self._owed, {}
            for user, ids in owed.items():
                try:
                    async with self.store.read() as session:
                        jobs = (await session.scalars(sa.select(JobRecord).where(JobRecord.id.in_(ids)))).all()
                    if jobs:
                        await self._read(user, list(jobs), background=True)
                except asyncio.CancelledError:
                    raise
                except SkyUnavailable as exc:  # no science extra here: the sky request will say so
                    log.debug("footprints of ended jobs not read: %s", exc)
                except Exception:  # the first sky request reads it again; nothing is lost
                    log.warning("reading the footprints of %d ended job(s) failed", len(ids), exc_info=True)

    async def idle(self) -> None:
        """Wait until no footprint is owed (the tests wait on it)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop reading owed footprints (what is left is read on the first request after a restart)."""
        await stop_task(self._task)  # the task catches its own errors
        self._task = None

    def image_of(self, job: JobRecord, parents: dict[str, JobRecord]) -> Path | None:
        """The FITS picture a job's footprint is read from: its own, its parents', or a FITS dataset."""
        for candidate in [job, *(parents[p] for p in (job.depends_on or []) if p in parents)]:
            out = jobdir.job_dir(self.work_path, candidate.user, candidate.id) / jobdir.OUTPUTS_DIR
            for name in IMAGE_NAMES:
                if (out / name).is_file():
                    return out / name
            found = sorted(out.glob("*.fits")) if out.is_dir() else []
            if found:
                return found[0]
        dataset = self.datasets.get(job.dataset_id) if job.dataset_id else None
        if dataset is not None and dataset.path.suffix.lower() in (".fits", ".fit") and dataset.path.is_file():
            return dataset.path
        return None

    def dataset_of(self, job: JobRecord, parents: dict[str, JobRecord]) -> Any | None:
        """The visibilities a footprint without an image is read from: the job's dataset, else its parents'."""
        for candidate in [job, *(parents[p] for p in (job.depends_on or []) if p in parents)]:
            dataset = self.datasets.get(candidate.dataset_id) if candidate.dataset_id else None
            if dataset is not None:
                return dataset
        return None

    async def footprints(self, user: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """The footprints of the user's jobs that match ``query``, newest job first (read where missing)."""
        fq = footprint_query(user, query)
        async with self.store.read() as session:
            jobs = (await session.scalars(sa.select(JobRecord).where(*fq.conds)
                                          .order_by(JobRecord.created_at.desc()))).all()
            ids = [j.id for j in jobs]
            rows = {f.job_id: f for f in (await session.scalars(
                sa.select(SkyFootprint).where(SkyFootprint.job_id.in_(ids)))).all()} if ids else {}
        stale = [j for j in jobs if j.id not in rows or rows[j.id].job_status != j.status]
        if stale:
            rows.update(await self._read(user, stale))
        return [footprint_to_json(j, rows.get(j.id)) for j in jobs]

    async def moc(self, user: str, query: dict[str, str]) -> dict[str, list[int]]:
        """The IVOA MOC (JSON) of the matching jobs' footprints; cached by the cones it unites."""
        order = footprint_query(user, query).order
        cones = sorted({(round(f["ra_deg"], 7), round(f["dec_deg"], 7), round(f["radius_deg"], 7))
                        for f in await self.footprints(user, query) if f["ra_deg"] is not None})
        key = (order, *cones)
        if key not in self._mocs:
            if not cones:
                return {}
            self._mocs[key] = await asyncio.to_thread(self.call_worker, "moc", {"cones": cones, "order": order})
            if len(self._mocs) > 256:
                self._mocs.pop(next(iter(self._mocs)))
        return self._mocs[key]

    async def _read(self, user: str, jobs: list[JobRecord], background: bool = False) -> dict[str, SkyFootprint]:
        async with self._lock:  # two requests must not read the same files twice over
            parent_ids = {p for j in jobs for p in (j.depends_on or [])}
            async with self.store.read() as session:
                parents = {p.id: p for p in (await session.scalars(
                    sa.select(JobRecord).where(JobRecord.id.in_(parent_ids)))).all()} if parent_ids else {}
            # a few stat calls per job, for hundreds of jobs ending together: off the event loop
            items = await asyncio.to_thread(self._sources, jobs, parents)
            todo = [i for i in items if i["image"] or i["dataset"]]
            answers = {a["key"]: a for a in await asyncio.to_thread(
                self.call_worker, "footprints", {"items": todo}, background)} if todo else {}
            now = utcnow()
            rows = {}
            for job, item in zip(jobs, items):
                a = answers.get(job.id, {"error": "no image and no dataset"})
                rows[job.id] = SkyFootprint(
                    job_id=job.id, user=user, job_status=job.status,
                    basis=a.get("basis", "none") if "error" not in a else "none",
                    ra_deg=a.get("ra_deg"), dec_deg=a.get("dec_deg"), radius_deg=a.get("radius_deg"),
                    image=item["image"] if a.get("basis") == "image" else None, error=a.get("error"), computed_at=now)
            table = SkyFootprint.__table__
            async with self.store.write() as tx:
                # each job's row replaced: two statements for the lot, not a merge (a SELECT and
                # an INSERT or UPDATE) per job, on the loop the event stream shares
                await tx.session.execute(sa.delete(table).where(table.c.job_id.in_(list(rows))))
                await tx.session.execute(sa.insert(table), [
                    {c.key: getattr(row, c.key) for c in table.columns} for row in rows.values()])
            return rows

    def _sources(self, jobs: list[JobRecord], parents: dict[str, JobRecord]) -> list[dict[str, Any]]:
        """What each job's footprint is read from: its image, else its visibilities, else nothing."""
        items = []
        for job in jobs:
            image = self.image_of(job, parents)
            dataset = self.dataset_of(job, parents) if image is None else None
            items.append({"key": job.id, "image": str(image) if image else None,
                          "dataset": str(dataset.path) if dataset is not None and dataset.path.exists() else None})
        return items

    def call_worker(self, command: str, request: dict[str, Any], background: bool = False) -> Any:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(request, fh)
        try:
            return self.worker("sky", [command, fh.name], background=background)
        except ScienceUnavailable as exc:
            raise SkyUnavailable(str(exc), field=None) from exc
        finally:
            Path(fh.name).unlink(missing_ok=True)
