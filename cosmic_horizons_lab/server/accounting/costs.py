"""What a job costs: GPU-hours, US dollars and TACC Service Units; and per-user SU budgets.

Two prices, because two audiences read them. The portal shows dollars
(``gpu_hourly_rate`` per GPU-hour, 0.35 by default, as the seed API does);
TACC allocations are in Service Units, charged by TACC's rule

    SUs = nodes × max(wall-clock hours, 0.25) × queue rate

(a quarter-hour minimum per job, rates per queue/partition, e.g. 3 SU per
node-hour on the a100 queues). A job is *estimated* before it is queued and
*charged* when it ends, from its real start and end times.

Budgets: a submission reserves the SUs its ``max_runtime`` could cost (the
upper bound; ``reserve_hours`` when it names none) until it ends and is
charged what it used. A submission whose reservation does not fit what is
left is refused with 402 and the figures; nothing is queued. The check runs
inside the submission's write transaction (an orchestrator ``submit_check``),
which the store serialises; on PostgreSQL a per-user advisory lock also
serialises servers that share the database, so concurrent submissions cannot
overspend.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.server.errors import BudgetExceeded
from cosmic_horizons_lab.protocol.states import TERMINAL
from cosmic_horizons_lab.server.store.orm import JobRecord
from cosmic_horizons_lab.server.store.database import Store, Tx
from cosmic_horizons_lab.server.api.submission import Submission

log = logging.getLogger(__name__)

#: TACC charges at least a quarter of an hour per job.
MIN_CHARGE_HOURS = 0.25


@dataclass(frozen=True)
class CostEstimate:
    """The price of ``gpu_count`` GPUs for ``wall_hours``, in every unit we report."""

    wall_hours: float
    gpu_count: int
    nodes: int
    queue: str
    su_rate: float
    gpu_hours: float
    cost_usd: float
    su: float

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class CostModel:
    """Rates and rules; pure arithmetic, shared by estimates, charges, tips and metrics."""

    def __init__(
        self,
        *,
        gpu_hourly_rate: float = 0.35,
        su_rates: dict[str, float] | None = None,
        queue: str = "local",
        gpus_per_node: int = 1,
        single_node: bool = True,
        reserve_hours: float = 1.0,
    ) -> None:
        self.gpu_hourly_rate = gpu_hourly_rate
        self.su_rates = dict(su_rates or {})
        self.queue = queue
        self.gpus_per_node = max(1, gpus_per_node)
        #: The local backend runs every job on this one machine: one node whatever the GPU count.
        self.single_node = single_node
        self.reserve_hours = reserve_hours

    @property
    def su_rate(self) -> float:
        """SUs per node-hour of this server's queue (``default`` when the queue has no rate of its own)."""
        return float(self.su_rates.get(self.queue, self.su_rates.get("default", 1.0)))

    def nodes(self, gpu_count: int) -> int:
        if self.single_node:
            return 1
        return max(1, math.ceil(gpu_count / self.gpus_per_node))

    def estimate(self, gpu_count: int, wall_hours: float, *, minimum: bool = True) -> CostEstimate:
        """Price of a run; ``minimum`` applies TACC's quarter-hour minimum to the SUs (a job that ran)."""
        nodes = self.nodes(gpu_count)
        billed = max(wall_hours, MIN_CHARGE_HOURS) if minimum else wall_hours
        gpu_hours = gpu_count * wall_hours
        return CostEstimate(
            wall_hours=wall_hours, gpu_count=gpu_count, nodes=nodes, queue=self.queue, su_rate=self.su_rate,
            gpu_hours=gpu_hours, cost_usd=gpu_hours * self.gpu_hourly_rate, su=nodes * billed * self.su_rate,
        )

    def measured(self, job: JobRecord, gpus: int, nodes: int) -> CostEstimate | None:
        """The price of what the job's own samples say it held: ``gpus`` GPUs on ``nodes`` nodes for
        its wall time (None when it never ran). GPU-hours = sampled GPUs × wall hours; SUs by
        TACC's rule on the nodes sampled (one on the local backend)."""
        if job.started_at is None or job.completed_at is None:
            return None
        hours = max(0.0, (job.completed_at - job.started_at).total_seconds() / 3600)
        billed_nodes = 1 if self.single_node else max(1, nodes)
        gpu_hours = gpus * hours
        return CostEstimate(
            wall_hours=hours, gpu_count=gpus, nodes=billed_nodes, queue=self.queue, su_rate=self.su_rate,
            gpu_hours=gpu_hours, cost_usd=gpu_hours * self.gpu_hourly_rate,
            su=billed_nodes * max(hours, MIN_CHARGE_HOURS) * self.su_rate,
        )

    def reservation_hours(self, max_runtime_seconds: int | None) -> float:
        return max_runtime_seconds / 3600 if max_runtime_seconds else self.reserve_hours

    def reservation(self, gpu_count: int, max_runtime_seconds: int | None) -> float:
        """SUs held for a job that has not ended: the most it can be charged."""
        return self.estimate(gpu_count, self.reservation_hours(max_runtime_seconds)).su

    def charge(self, job: JobRecord) -> None:
        """Set the job's gpu_hours, cost_usd and su_charged from its real run (0 if it never ran)."""
        if job.started_at is None or job.completed_at is None:
            job.gpu_hours, job.cost_usd, job.su_charged = 0.0, 0.0, 0.0
            return
        hours = max(0.0, (job.completed_at - job.started_at).total_seconds() / 3600)
        cost = self.estimate(job.gpu_count, hours)
        job.gpu_hours, job.cost_usd, job.su_charged = cost.gpu_hours, cost.cost_usd, cost.su


class Budgets:
    """Each user's SU budget: one default for everyone, or per user from a file operators maintain.

    The file is JSON, re-read when it changes::

        {"default": 500, "users": {"alice": 2000, "bob": 0}}

    A user it does not name gets ``default`` (from the file, else the
    ``su_budget`` setting); a budget of ``null`` means unlimited. A file that
    cannot be read is logged and the last good content kept (never "unlimited
    by accident").
    """

    def __init__(self, default: float | None, path: str | Path | None = None) -> None:
        self.default = default
        self.path = Path(path) if path else None
        self._stamp: tuple[float, int] | None = None
        self._file: dict[str, Any] = {}

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            st = self.path.stat()
            stamp = (st.st_mtime, st.st_size)
            if stamp != self._stamp:
                data = json.loads(self.path.read_text())
                if not isinstance(data, dict) or not isinstance(data.get("users", {}), dict):
                    raise ValueError("expected {'default': n, 'users': {name: n}}")
                self._file, self._stamp = data, stamp
        except (OSError, ValueError) as exc:
            log.warning("SU budgets file %s unusable (%s); keeping the last good one", self.path, exc)
        return self._file

    def budget_for(self, user: str) -> float | None:
        data = self._read()
        users = data.get("users", {})
        if user in users:
            value = users[user]
        elif "default" in data:
            value = data["default"]
        else:
            value = self.default
        return None if value is None else float(value)


class Accounting:
    """Budget checks at submission and charges at the end: the orchestrator's cost hooks."""

    def __init__(self, store: Store, model: CostModel, budgets: Budgets) -> None:
        self.store = store
        self.model = model
        self.budgets = budgets

    async def _committed(self, session: Any, user: str) -> tuple[float, float]:
        """(SUs charged to ended jobs, SUs reserved by active ones) as the database has them."""
        used = await session.scalar(sa.select(sa.func.coalesce(sa.func.sum(JobRecord.su_charged), 0.0)).where(JobRecord.user == user))
        rows = await session.execute(
            sa.select(JobRecord.gpu_count, JobRecord.max_runtime_seconds).where(JobRecord.user == user, JobRecord.status.notin_([str(s) for s in TERMINAL]))
        )
        reserved = sum(self.model.reservation(g, m) for g, m in rows.all())
        return float(used or 0.0), reserved

    async def balance(self, user: str) -> dict[str, float | None]:
        """``{"budget_su", "used_su", "reserved_su", "remaining_su"}`` (budget/remaining null = unlimited)."""
        budget = self.budgets.budget_for(user)
        async with self.store.read() as session:
            used, reserved = await self._committed(session, user)
        remaining = None if budget is None else budget - used - reserved
        return {"budget_su": budget, "used_su": round(used, 6), "reserved_su": round(reserved, 6),
                "remaining_su": None if remaining is None else round(remaining, 6)}

    async def check(self, tx: Tx, user: str, sub: Submission) -> None:
        """Refuse (402) a submission whose reservation exceeds what the user has left.

        Runs inside the submission's transaction. The database is read once
        per user per transaction; what this transaction already accepted is
        tracked in the session's ``info``, because a group commit or a batch
        checks several submissions before their jobs are flushed.
        """
        budget = self.budgets.budget_for(user)
        if budget is None:
            return
        ledger: dict[str, float] = tx.session.info.setdefault("su_committed", {})
        accepted: dict[str, float] = tx.session.info.setdefault("su_accepted", {})
        if user not in ledger:
            if tx.session.bind is not None and tx.session.bind.dialect.name == "postgresql":
                await tx.session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:u))"), {"u": "su:" + user})
            with tx.session.no_autoflush:
                used, reserved = await self._committed(tx.session, user)
            ledger[user] = used + reserved
        need = self.model.reservation(sub.gpu_count, sub.max_runtime_seconds)
        remaining = budget - ledger[user] - accepted.get(user, 0.0)
        if need > remaining + 1e-9:
            raise BudgetExceeded(
                f"this job may cost {need:.2f} SU (gpu_count {sub.gpu_count}, "
                f"{self.model.reservation_hours(sub.max_runtime_seconds):g} h at {self.model.su_rate:g} SU/node-hour "
                f"on '{self.model.queue}'); {max(remaining, 0):.2f} of your {budget:.2f} SU are left",
                field="params.max_runtime",
                estimated_su=round(need, 6), remaining_su=round(max(remaining, 0.0), 6), budget_su=budget,
            )
        accepted[user] = accepted.get(user, 0.0) + need

    def on_transition(self, tx: Tx, job: JobRecord, previous: str) -> None:
        """Charge a job when it ends, in the transaction that ends it.

        The charge is computed just before that transaction commits, not at
        the hook: the orchestrator may still correct ``completed_at`` to the
        executor's own end time after the transition, and that is the time
        TACC would bill.
        """
        if job.status in TERMINAL and previous not in TERMINAL:
            pending: list[JobRecord] = tx.session.info.setdefault("cost_pending", [])
            if not pending:
                sa.event.listen(tx.session.sync_session, "before_commit", self._charge_pending, once=True)
            pending.append(job)
            self.model.charge(job)  # provisional, for anything later in this transaction

    def _charge_pending(self, session: Any) -> None:
        for job in session.info.pop("cost_pending", []):
            self.model.charge(job)


def budgets_from_settings(su_budget: float, path: str) -> Budgets:
    """``su_budget`` ≤ 0 means unlimited; the file (if any) overrides per user."""
    return Budgets(su_budget if su_budget > 0 else None, os.path.expanduser(path) if path else None)
