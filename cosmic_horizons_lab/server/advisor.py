"""Advice before work is spent: tips for a submission (``POST jobs/optimize``).

Every tip names its field, a severity and the basis it stands on (the
user's own history, the dataset's measured properties from
:mod:`.inspection`, the configured rates); where there is no basis there is
no tip — no generic "consider fewer GPUs".
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.server.accounting.costs import Accounting, CostModel
from cosmic_horizons_lab.server.inspection import DatasetInspector
from cosmic_horizons_lab.server.datasets import DatasetRegistry
from cosmic_horizons_lab.server.store.orm import JobRecord
from cosmic_horizons_lab.server.store.database import Store
from cosmic_horizons_lab.server.api.submission import SubmissionValidator
from cosmic_horizons_lab.server.accounting.usage import Usage

#: Visibilities one GPU keeps busy: below this a second GPU mostly waits (the agents chunk
#: baselines across devices; measured on the demo, one A100 handles ~50 M visibilities per chunk).
VISIBILITIES_PER_GPU = 50_000_000


class Advisor:
    """``POST jobs/optimize``: tips for a submission from history, validation and rates."""

    def __init__(self, *, store: Store, validator: SubmissionValidator, datasets: DatasetRegistry,
                 inspector: DatasetInspector, costs: CostModel, accounting: Accounting, usage: Usage) -> None:
        self.store = store
        self.validator = validator
        self.datasets = datasets
        self.inspector = inspector
        self.costs = costs
        self.accounting = accounting
        self.usage = usage

    async def similar_runtimes(self, user: str, agent: str, size: int | None, script: str | None) -> list[tuple[float, JobRecord]]:
        """(minutes scaled to this size, job) of the user's completed jobs of this agent on similar data.

        Similar: dataset within a factor of two in size (runtimes scale about
        linearly with visibilities); for Script jobs, the same script.
        """
        async with self.store.read() as session:
            jobs = (await session.scalars(
                sa.select(JobRecord).where(JobRecord.user == user, JobRecord.agent == agent, JobRecord.status == "COMPLETED",
                                     JobRecord.started_at.is_not(None)).order_by(JobRecord.completed_at.desc()).limit(200)
            )).all()
        out = []
        for job in jobs:
            minutes = (job.completed_at - job.started_at).total_seconds() / 60
            if script is not None:
                if (job.params or {}).get("path") == script:
                    out.append((minutes, job))
                continue
            other = self.datasets.get(job.dataset_id) if job.dataset_id else None
            if size and other and other.size_bytes and 0.5 <= size / other.size_bytes <= 2.0:
                out.append((minutes * size / other.size_bytes, job))
        return out

    async def tips(self, user: str, body: Any) -> dict[str, Any]:
        sub = self.validator.validate(body)
        tips: list[dict[str, Any]] = []
        size = sub.dataset.size_bytes if sub.dataset else None
        script = sub.params.get("path") if sub.agent == "Script" else None
        similar = await self.similar_runtimes(user, sub.agent, size, script)

        estimate = low = high = None
        if similar:
            runs = sorted(m for m, _ in similar)
            estimate = statistics.median(runs)
            low, high = (runs[0], runs[-1]) if len(runs) < 5 else (
                statistics.quantiles(runs, n=10)[0], statistics.quantiles(runs, n=10)[-1])
            tips.append({
                "severity": "info", "field": "params.max_runtime",
                "message": f"similar jobs took {low:.1f}–{high:.1f} min (median {estimate:.1f}, {len(runs)} jobs)",
                "reasoning": f"your completed {sub.agent} jobs" + (" on datasets within 2× this size, scaled by size"
                                                                     if script is None else f" of {script}"),
                "basis": {"jobs": len(runs), "job_ids": [j.id for _, j in similar[:10]]},
            })
            limit = sub.max_runtime_seconds / 60 if sub.max_runtime_seconds else None
            if limit is not None and limit < high:
                tips.append({
                    "severity": "warning", "field": "params.max_runtime",
                    "message": f"max_runtime ({limit:g} min) is below the {high:.1f} min similar jobs needed: "
                               "it may be stopped before it finishes",
                    "reasoning": "the longest (or 90th-percentile) runtime of similar jobs exceeds the limit",
                })
            elif limit is not None and limit > 4 * high and limit >= 60:
                tips.append({
                    "severity": "info", "field": "params.max_runtime",
                    "message": f"max_runtime ({limit:g} min) is over 4× what similar jobs needed ({high:.1f} min); "
                               f"it holds {self.costs.reservation(sub.gpu_count, sub.max_runtime_seconds):.2f} SU of "
                               "your budget until the job ends",
                    "reasoning": "budgets reserve a job's max_runtime; a tighter limit frees budget for other jobs",
                })

        validation = None
        if sub.dataset is not None:
            try:
                validation = await self.inspector.validate(sub.dataset.id)
            except Exception:
                validation = None
        if validation is not None:
            tips.extend(self._data_tips(sub, validation))
        if similar and sub.gpu_count > 1:
            util = await self.usage.mean_utilization([j for _, j in similar])
            if util is not None and util < 25:
                tips.append({
                    "severity": "warning", "field": "params.gpu_count",
                    "message": f"similar jobs kept their GPUs {util:.0f}% busy on average: "
                               f"{sub.gpu_count} GPUs are likely more than this job uses",
                    "reasoning": "GPU utilisation measured by telemetry during your similar jobs",
                })

        for warning in self.validator.warnings(sub.params):
            tips.append({**warning, "severity": "warning",
                         "reasoning": "the server's backend has no GPU; the agents run on its CPU instead"})

        hours = estimate / 60 if estimate is not None else (
            sub.max_runtime_seconds / 3600 if sub.max_runtime_seconds else None)
        cost = self.costs.estimate(sub.gpu_count, hours) if hours is not None else None
        if cost is not None:
            basis = "median runtime of similar jobs" if estimate is not None else "max_runtime (upper bound)"
            tips.append({
                "severity": "info", "field": "params.gpu_count",
                "message": f"estimated cost ${cost.cost_usd:.2f} ({cost.gpu_hours:.2f} GPU-h at "
                           f"${self.costs.gpu_hourly_rate:g}/GPU-h) and {cost.su:.2f} SU",
                "reasoning": f"from the {basis}; SUs = {cost.nodes} node(s) × max(h, 0.25) × {cost.su_rate:g} on '{cost.queue}'",
            })
        balance = await self.accounting.balance(user)
        reserve = self.costs.reservation(sub.gpu_count, sub.max_runtime_seconds)
        if balance["remaining_su"] is not None and reserve > balance["remaining_su"]:
            tips.append({
                "severity": "error", "field": "params.max_runtime",
                "message": f"this job reserves {reserve:.2f} SU but {max(balance['remaining_su'], 0):.2f} SU are "
                           "left of your budget: it would be refused (402)",
                "reasoning": "SU budget (operators' setting) minus charges and reservations of your active jobs",
            })
        return {
            "tips": tips,
            "estimated_runtime_minutes": None if estimate is None else round(estimate, 3),
            "runtime_range_minutes": None if low is None else [round(low, 3), round(high, 3)],
            "estimated_cost_usd": None if cost is None else round(cost.cost_usd, 4),
            "estimated_su": None if cost is None else round(cost.su, 4),
            "estimated_gpu_hours": None if cost is None else round(cost.gpu_hours, 4),
            "budget": balance,
        }

    def _data_tips(self, sub: Any, v: dict[str, Any]) -> list[dict[str, Any]]:
        tips: list[dict[str, Any]] = []
        shape = v.get("shape") or {}
        vis = shape.get("visibilities")
        if vis and sub.gpu_count > 1:
            useful = max(1, math.ceil(vis / VISIBILITIES_PER_GPU))
            if sub.gpu_count > useful:
                tips.append({
                    "severity": "warning", "field": "params.gpu_count",
                    "message": f"the dataset has {vis:,} visibilities: {useful} GPU(s) can use them "
                               f"(about {VISIBILITIES_PER_GPU // 1_000_000} M per GPU); {sub.gpu_count} would idle and cost more",
                    "reasoning": "dataset shape from validation; the agents split baselines across GPUs in chunks",
                })
        strategy = sub.params.get("rfi_strategy")
        flagged, outliers = v.get("flagged_fraction"), v.get("outlier_fraction")
        if strategy is not None and flagged is not None:
            if strategy == "high_sensitivity" and flagged > 0.3:
                tips.append({
                    "severity": "warning", "field": "params.rfi_strategy",
                    "message": f"{flagged:.0%} of the data is already flagged: high_sensitivity also flags whole "
                               "channels and integrations more than half flagged, and would discard much good data; "
                               "'medium' is safer",
                    "reasoning": "flagged fraction measured by validation",
                })
            if strategy in ("none", "low") and outliers is not None and outliers > 0.01:
                tips.append({
                    "severity": "warning", "field": "params.rfi_strategy",
                    "message": f"{outliers:.1%} of unflagged amplitudes are > 6σ outliers (likely RFI): "
                               f"'{strategy}' leaves most of it; use 'medium' (or 'high_sensitivity')",
                    "reasoning": "robust (median/MAD) outlier fraction measured by validation",
                })
        for problem in v.get("problems", []):
            tips.append({"severity": "error" if not v.get("valid", True) else "warning", "field": "dataset_id",
                         "message": problem, "reasoning": "dataset validation"})
        return tips
