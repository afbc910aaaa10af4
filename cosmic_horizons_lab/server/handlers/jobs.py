"""Handlers for jobs: submissions, batches, pipelines, a job and its status, events, logs and
outputs, and job lists."""

from __future__ import annotations

import asyncio
import mimetypes
from typing import TYPE_CHECKING

from jupyter_server.auth.decorator import authorized
from tornado import web

from cosmic_horizons_lab.protocol import jobdir
from cosmic_horizons_lab.server.api.requests import EVENTS_QUERY, LOGS_QUERY, RESOURCES_QUERY
from cosmic_horizons_lab.server.api.responses import job_to_json, status_to_json
from cosmic_horizons_lab.server.errors import NotFound

if TYPE_CHECKING:
    pass


from cosmic_horizons_lab.server.handlers.base import APIBase


class SubmitHandler(APIBase):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        key = self.request.headers.get("Idempotency-Key")
        job, created = await self.orchestrator.intake.submit(
            self.owner, self.json_body(), idempotency_key=key, correlation_id=self.correlation_id
        )
        if not self.correlation_id:
            self.set_header("X-Correlation-ID", job.correlation_id)
        answer = job_to_json(job, self.api_url)
        warnings = self.app.validator.warnings(job.params or {})
        if warnings:
            answer["warnings"] = warnings
        self.reply(answer, 201 if created else 200)


class SubmitBatchHandler(APIBase):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        batch, jobs = await self.orchestrator.intake.submit_batch(
            self.owner, self.json_body(), correlation_id=self.correlation_id
        )
        self.reply(
            {"batch_id": batch.id, "parallelLimit": batch.parallel_limit, "jobs": [job_to_json(j, self.api_url) for j in jobs]},
            201,
        )


class PipelineHandler(APIBase):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        batch, jobs = await self.orchestrator.intake.submit_pipeline(
            self.owner, self.json_body(), correlation_id=self.correlation_id
        )
        self.reply(
            {
                "pipeline_id": batch.id,
                "batch_id": batch.id,
                "stages": {name: job.id for name, job in jobs.items()},
                "jobs": [job_to_json(j, self.api_url) for j in jobs.values()],
            },
            201,
        )


class JobHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        self.reply(job_to_json(job, self.api_url))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        job = await self.orchestrator.cancel(self.owner, job_id)
        self.reply(job_to_json(job, self.api_url))


class JobStatusHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        self.reply(status_to_json(job, self.api_url))


class JobEventsHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        after = self.int_arg("after", EVENTS_QUERY)
        limit = self.int_arg("limit", EVENTS_QUERY)
        events = await self.app.store.events_after(self.owner, after, job_id=job.id, limit=limit)
        self.reply({"job_id": job.id, "events": events})


class JobResourcesHandler(APIBase):
    """The resource samples the job took of itself (``server/jobs/samples.py``), after a cursor."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        after = self.int_arg("after", RESOURCES_QUERY)
        limit = self.int_arg("limit", RESOURCES_QUERY)
        samples, next_after = await self.app.job_samples.series(job.id, after, limit)
        self.reply({"job_id": job.id, "status": job.status, "samples": samples, "next_after": next_after})


class JobLogsHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        offset = self.int_arg("offset", LOGS_QUERY)
        limit = self.int_arg("limit", LOGS_QUERY)
        path = jobdir.job_dir(self.app.work_path, job.user, job.id)
        chunk = await asyncio.to_thread(jobdir.read_log, path, offset, limit)
        self.reply({"job_id": job.id, "status": job.status, **chunk})


class JobOutputsHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        path = jobdir.job_dir(self.app.work_path, job.user, job.id)
        files = await asyncio.to_thread(self.app.outputs.list, path)
        out_dir = (path / "outputs").resolve()
        under_root = out_dir.is_relative_to(self.app.root_path)
        for f in files:
            f["url"] = f"{self.api_url}jobs/{job.id}/outputs/{f['path']}"
            # Where Lab's file browser finds it (null when work_dir lies outside the server root).
            f["root_path"] = (out_dir / f["path"]).relative_to(self.app.root_path).as_posix() if under_root else None
        self.reply({"job_id": job.id, "status": job.status, "directory": str(path / "outputs"), "files": files})


class JobOutputFileHandler(APIBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str, relative: str) -> None:
        job = await self.orchestrator.get_job(self.owner, job_id)
        path = jobdir.output_file(jobdir.job_dir(self.app.work_path, job.user, job.id), relative)
        if path is None:
            raise NotFound(f"job {job_id} has no output {relative!r}", field="path")
        self.set_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self.set_header("Content-Disposition", f'attachment; filename="{path.name}"')
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                self.write(chunk)
                await self.flush()
        self.finish()


class JobListHandler(APIBase):
    """History (``jobs/history/list``) and search (``jobs/search``): one query, two paths."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        page = await self.orchestrator.list_jobs(self.owner, self.query())
        self.reply(
            {
                "items": [job_to_json(j, self.api_url) for j in page.items],
                "total": page.total,
                "page": page.page,
                "page_size": page.page_size,
            }
        )
