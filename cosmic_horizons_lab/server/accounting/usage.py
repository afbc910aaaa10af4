"""``GET jobs/metrics``: what a user's jobs achieved and cost, overall, by agent and by period.

A job that sampled its own GPUs (``job_samples``, taken inside the job on its node: see
``server/jobs/samples.py``) is measured by those samples: its GPU-hours are the GPUs it sampled ×
its wall time, its cost and SUs follow from them (``CostModel.measured``), and its utilisation
is the mean of its samples (``measured_jobs`` counts such jobs). A job without them falls back
to what follows: the charge recorded when it ended (``gpu_count`` × wall time), and for
utilisation the server host's telemetry samples
(``gpu_samples``) taken while each job ran, on the GPUs it was given (the
local backend records its slots in the job's ``local.json``; slot i is GPU
i). A job with no samples (no GPU, or telemetry off) has no utilisation —
never an assumed one — and the figure is null when no job has any.

Success rate is completed / (completed + failed): a cancellation is the
user's choice, not a failure of the job.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from cosmic_horizons_lab.protocol.clock import isoformat
from cosmic_horizons_lab.server.accounting.costs import CostModel
from cosmic_horizons_lab.server.errors import BadRequest
from cosmic_horizons_lab.server.api.filters import created_between
from cosmic_horizons_lab.protocol.states import TERMINAL
from cosmic_horizons_lab.server.store.orm import GpuSample, JobRecord
from cosmic_horizons_lab.server.store.database import Store

if TYPE_CHECKING:
    from cosmic_horizons_lab.server.jobs.samples import JobSamples

PERIODS = ("day", "week", "month")


class Usage:
    def __init__(
        self, store: Store, costs: CostModel, work_dir: Path | None = None, samples: "JobSamples | None" = None,
    ) -> None:
        self.store = store
        self.costs = costs
        self.work_dir = work_dir
        #: ``JobSamples`` (server/jobs/samples.py): the jobs' own samples, when the app has them
        self.samples = samples

    async def status_counts(self, server_id: str) -> dict[str, int]:
        async with self.store.read() as session:
            rows = await session.execute(
                sa.select(JobRecord.status, sa.func.count()).where(JobRecord.server_id == server_id).group_by(JobRecord.status)
            )
            return {status: n for status, n in rows.all()}

    # -- measured utilisation --------------------------------------------------------------
    def _gpu_indices(self, job: JobRecord) -> list[int] | None:
        if self.work_dir is None:
            return None
        try:
            launch = json.loads((self.work_dir / job.user / job.id / "local.json").read_text())
            return [int(s) for s in launch["slots"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def utilization_by_job(self, jobs: list[JobRecord]) -> dict[str, list[float]]:
        """Each job's telemetry samples (utilisation %) during its run, on its GPUs when known."""
        runs = [j for j in jobs if j.started_at and j.completed_at]
        if not runs:
            return {}
        start = min(j.started_at for j in runs)
        end = max(j.completed_at for j in runs)
        async with self.store.read() as session:
            rows = (await session.execute(
                sa.select(GpuSample.ts, GpuSample.gpu_index, GpuSample.utilization)
                .where(GpuSample.ts >= start, GpuSample.ts <= end).order_by(GpuSample.ts)
            )).all()
        if not rows:
            return {}
        by_gpu: dict[int, tuple[list[datetime], list[float]]] = defaultdict(lambda: ([], []))
        for ts, index, util in rows:
            by_gpu[index][0].append(ts)
            by_gpu[index][1].append(util)
        indices = await asyncio.to_thread(lambda: {j.id: self._gpu_indices(j) for j in runs})
        out: dict[str, list[float]] = {}
        for job in runs:
            gpus = indices.get(job.id) or list(by_gpu)
            samples: list[float] = []
            for g in gpus:
                if g not in by_gpu:
                    continue
                times, utils = by_gpu[g]
                lo = bisect.bisect_left(times, job.started_at)
                hi = bisect.bisect_right(times, job.completed_at)
                samples.extend(utils[lo:hi])
            if samples:
                out[job.id] = samples
        return out

    async def mean_utilization(self, jobs: list[JobRecord]) -> float | None:
        samples = [u for s in (await self.utilization_by_job(jobs)).values() for u in s]
        return sum(samples) / len(samples) if samples else None

    # -- the report ----------------------------------------------------------------------------
    async def metrics(self, user: str, query: dict[str, str], budget: dict[str, Any]) -> dict[str, Any]:
        period = query.get("period", "day")
        if period not in PERIODS:
            raise BadRequest(f"'period' must be one of {', '.join(PERIODS)}", field="period")
        conds = [JobRecord.user == user]
        dated, parsed = created_between(query)
        conds += dated
        bounds: dict[str, str | None] = {name: isoformat(when) for name, when in parsed.items()}
        if query.get("agent"):
            conds.append(JobRecord.agent == query["agent"])
        async with self.store.read() as session:
            jobs = list((await session.scalars(sa.select(JobRecord).where(*conds).order_by(JobRecord.created_at))).all())
        samples = await self.utilization_by_job(jobs)
        if self.samples is not None:
            own = await self.samples.usage_by_job([j.id for j in jobs if j.status in TERMINAL])
            for job in jobs:
                if job.id in own:
                    samples[job.id] = own[job.id]
        by_agent: dict[str, list[JobRecord]] = defaultdict(list)
        by_period: dict[str, list[JobRecord]] = defaultdict(list)
        for job in jobs:
            by_agent[job.agent].append(job)
            by_period[_period_key(job.created_at, period)].append(job)
        totals = self._summary(jobs, samples)
        return {
            "user": user,
            **totals,
            "period": period,
            **bounds,
            "gpu_hourly_rate": self.costs.gpu_hourly_rate,
            "su_rate": self.costs.su_rate,
            "queue": self.costs.queue,
            "budget": budget,
            "by_agent": {agent: self._summary(js, samples) for agent, js in sorted(by_agent.items())},
            "by_period": [{"period": key, **self._summary(js, samples)} for key, js in sorted(by_period.items())],
        }

    def _summary(self, jobs: list[JobRecord], samples: dict[str, Any]) -> dict[str, Any]:
        done = [j for j in jobs if j.status == "COMPLETED"]
        failed = sum(1 for j in jobs if j.status == "FAILED")
        cancelled = sum(1 for j in jobs if j.status == "CANCELLED")
        runtimes = [(j.completed_at - j.started_at).total_seconds() / 60 for j in done if j.started_at and j.completed_at]
        gpu_hours = cost = su = 0.0
        util_sum, util_n, measured_jobs = 0.0, 0, 0
        for j in jobs:
            own = samples.get(j.id)
            if isinstance(own, dict):  # the job's own samples: {"gpus", "nodes", "utilization", "samples"}
                util_sum += own["utilization"] * own["samples"]
                util_n += own["samples"]
            elif own:  # the server host's telemetry during the job: a list of percentages
                util_sum += sum(own)
                util_n += len(own)
            if j.status not in TERMINAL:
                continue
            price = self.costs.measured(j, own["gpus"], own["nodes"]) if isinstance(own, dict) else None
            if price is not None:
                measured_jobs += 1
                gpu_hours += price.gpu_hours
                cost += price.cost_usd
                su += price.su
                continue
            if j.gpu_hours is None:  # ended before costs were recorded: price it the same way now
                self.costs.charge(j)
            gpu_hours += j.gpu_hours or 0.0
            cost += j.cost_usd or 0.0
            su += j.su_charged or 0.0
        return {
            "total_jobs": len(jobs),
            "completed": len(done),
            "failed": failed,
            "cancelled": cancelled,
            "active": len(jobs) - len(done) - failed - cancelled,
            "success_rate": round(len(done) / (len(done) + failed), 6) if done or failed else None,
            "average_runtime_minutes": round(sum(runtimes) / len(runtimes), 6) if runtimes else None,
            "gpu_hours": round(gpu_hours, 6),
            "gpu_utilization": round(util_sum / util_n, 3) if util_n else None,
            "gpu_utilization_samples": util_n,
            "measured_jobs": measured_jobs,
            "cost_usd": round(cost, 6),
            "su_charged": round(su, 6),
        }


def _period_key(when: datetime, period: str) -> str:
    if period == "day":
        return when.date().isoformat()
    if period == "week":
        monday = when.date() - timedelta(days=when.weekday())
        return monday.isoformat()
    return f"{when.year:04d}-{when.month:02d}"
