"""``GET slurm/queue``: the caller's whole Slurm queue, with our own jobs marked.

Only with the slurm backend (409 otherwise: there is no Slurm queue to show). A row is one of
ours when its Slurm id is the backend id of one of the caller's jobs; it then names that job.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from cosmic_horizons_lab.backends.base import BackendUnavailable
from cosmic_horizons_lab.server.errors import Conflict, LabError
from cosmic_horizons_lab.server.handlers.base import APIBase

#: How many of the caller's newest jobs are matched against the queue (a listing's largest page).
OURS_WINDOW = 200


class QueueUnavailable(LabError):
    """squeue did not answer (the controller is down or slow)."""

    status = 503
    code = "backend_unavailable"


class SlurmQueueHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        backend = self.app.execution_backend
        if backend.name != "slurm":
            raise Conflict(
                f"the Slurm queue needs the slurm backend; this server runs {backend.name!r}", field=None
            )
        from cosmic_horizons_lab.backends.slurm.queue import read_user_queue

        try:
            rows = await read_user_queue(backend)
        except BackendUnavailable as exc:
            raise QueueUnavailable(f"squeue did not answer: {exc}", field=None) from None
        page = await self.orchestrator.list_jobs(self.owner, {"page_size": str(OURS_WINDOW)})
        ours = {j.backend_job_id: j.id for j in page.items if j.backend_job_id}
        jobs: list[dict[str, Any]] = []
        for row in rows:
            job_id = ours.get(row.id)
            jobs.append({**row.to_json(), "ours": job_id is not None, "job_id": job_id})
        self.reply({"backend": "slurm", "jobs": jobs})
