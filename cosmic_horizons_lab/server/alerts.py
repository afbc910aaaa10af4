"""Alerts: rules over the store, evaluated periodically and soon after job transitions.

The rules (``c.CosmicHorizons.alert_rules``, merged over :data:`DEFAULT_RULES`; a rule set to
``None`` or ``{"enabled": False}`` is off):

- ``failure_rate``: a user whose jobs that ended in the last ``window_minutes`` failed at a rate
  of at least ``threshold`` (failed / (completed + failed)), over at least ``min_jobs`` jobs;
  key: the user.
- ``queue_wait``: a job of this server QUEUED or QUEUING for more than ``minutes`` since it was
  submitted; key: the job.
- ``budget_<level>`` for each of ``budget.levels`` (80 and 100 by default): a user whose charged
  SUs reached ``level`` % of their budget (``accounting/costs.py``: ``su_budget`` or the budgets
  file); key: the user.
- ``gpu_idle``: a RUNNING job of this server that has run for more than ``minutes`` and whose
  GPU samples (``job_samples``, kind ``gpu``) over the last ``minutes`` all read below
  ``utilization`` %; a job with no GPU samples in that window is not judged; key: the job.

A rule fires once per episode: firing opens one ``alerts`` row per (rule, key), which stays open
while the condition holds and is resolved (``resolved_at``) when it no longer does; only then can
the same key fire again. Opening commits, in one transaction, the row, an ``alert.<rule>`` event
for the user concerned (so it reaches their WebSocket stream like every event), and, when
``alert_webhook_url`` is set, a webhook outbox row (``webhooks.py`` delivers it, signed with that
user's secret). Resolving records an ``alert.resolved`` event. On PostgreSQL an advisory lock
serialises the evaluation of servers sharing the database, so two never open the same alert.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.protocol.clock import isoformat, utcnow
from cosmic_horizons_lab.server.accounting.costs import Budgets
from cosmic_horizons_lab.server.background import stop_task
from cosmic_horizons_lab.server.store.database import Store, Tx
from cosmic_horizons_lab.server.store.orm import Alert, JobRecord, JobSample, WebhookDelivery

log = logging.getLogger(__name__)

DEFAULT_RULES: dict[str, dict[str, Any]] = {
    "failure_rate": {"window_minutes": 60, "threshold": 0.5, "min_jobs": 5},
    "queue_wait": {"minutes": 30},
    "budget": {"levels": [80, 100]},
    "gpu_idle": {"minutes": 15, "utilization": 5.0},
}
#: Events after which an evaluation is worth running soon (they can open or clear an alert).
_TRIGGERS = ("job.queued", "job.running", "job.completed", "job.failed", "job.cancelled")
#: The webhook outbox's ordering lane for alerts that are about no one job.
_LANE = "alerts"
_ADVISORY_KEY = 0x616C657274  # "alert"


@dataclass
class Finding:
    """A rule's condition holding for one key now."""

    rule: str
    key: str
    user: str
    job_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


def rules_from_settings(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rules in force: each default, updated by the operator's setting; off when set to None/disabled."""
    out: dict[str, dict[str, Any]] = {}
    for name, default in DEFAULT_RULES.items():
        given = settings.get(name, {})
        if given is None or given is False or (isinstance(given, dict) and given.get("enabled") is False):
            continue
        if not isinstance(given, dict):
            raise TypeError(f"alert_rules[{name!r}] must be a dict, None or False")
        out[name] = {**default, **given}
    unknown = set(settings) - set(DEFAULT_RULES)
    if unknown:
        raise ValueError(f"unknown alert rules {sorted(unknown)}; known: {sorted(DEFAULT_RULES)}")
    return out


class Alerts:
    """The evaluator and its loop."""

    def __init__(
        self,
        *,
        store: Store,
        server_id: str,
        budgets: Budgets,
        rules: dict[str, dict[str, Any]],
        webhook_url: str = "",
        interval: float = 60.0,
        debounce: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.server_id = server_id
        self.budgets = budgets
        self.rules = rules
        self.webhook_url = webhook_url
        self.interval = interval
        self.debounce = debounce
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._budget_seen: datetime | None = None

    # -- the loop ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.rules and self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await stop_task(self._task)  # the loop itself catches everything else

    def on_published(self, events: list[dict[str, Any]]) -> None:
        """Evaluate soon after a transition that can open or clear an alert (never for our own events)."""
        if self._task is not None and any(ev.get("type") in _TRIGGERS for ev in events):
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
                await asyncio.sleep(self.debounce)  # one evaluation for a burst of transitions
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert evaluation failed")

    # -- one evaluation -------------------------------------------------------------------------
    async def evaluate(self) -> list[dict[str, Any]]:
        """Check every rule; open the alerts that newly hold, resolve those that no longer do.

        Returns the alerts opened, as their events' payloads.
        """
        now = self.clock()
        findings: dict[tuple[str, str], Finding] = {}
        judged: set[str] = set()
        async with self.store.read() as session:
            open_budget_users = set((await session.scalars(
                sa.select(Alert.key).where(Alert.rule.like("budget_%"), Alert.resolved_at.is_(None)))).all())
            for name in self.rules:
                found, rules = await getattr(self, f"_{name}")(session, now, self.rules[name], open_budget_users)
                judged |= rules
                for f in found:
                    findings[(f.rule, f.key)] = f
        return await self._record(now, findings, judged)

    async def _record(self, now: datetime, findings: dict[tuple[str, str], Finding], judged: set[str]) -> list[dict[str, Any]]:
        opened: list[dict[str, Any]] = []
        async with self.store.write() as tx:
            if tx.session.bind is not None and tx.session.bind.dialect.name == "postgresql":
                await tx.session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
            open_rows = (await tx.session.scalars(sa.select(Alert).where(Alert.resolved_at.is_(None)))).all()
            open_keys = {(a.rule, a.key): a for a in open_rows}
            for (rule, key), f in findings.items():
                if (rule, key) in open_keys:
                    continue
                row = Alert(rule=rule, key=key, user=f.user, job_id=f.job_id, fired_at=now, resolved_at=None,
                            payload=f.payload)
                tx.session.add(row)
                await tx.session.flush()
                body = {"alert_id": row.id, "rule": rule, "key": key, "user": f.user, "job_id": f.job_id,
                        "fired_at": isoformat(now), **f.payload}
                self._emit(tx, f"alert.{rule}", f.user, f.job_id, body)
                self._owe_webhook(tx, now, f, body)
                opened.append(body)
            for (rule, key), row in open_keys.items():
                if rule in judged and (rule, key) not in findings:
                    row.resolved_at = now
                    self._emit(tx, "alert.resolved", row.user, row.job_id, {
                        "alert_id": row.id, "rule": rule, "key": key, "fired_at": isoformat(row.fired_at),
                        "resolved_at": isoformat(now)})
        return opened

    def _emit(self, tx: Tx, type_: str, user: str, job_id: str | None, payload: dict[str, Any]) -> None:
        ev = tx.emit(type_, user=user, payload=payload)
        ev.job_id = job_id

    def _owe_webhook(self, tx: Tx, now: datetime, f: Finding, body: dict[str, Any]) -> None:
        if not self.webhook_url:
            return
        event = f"alert.{f.rule}"
        doc = {"id": uuid.uuid4().hex, "event": event, "ts": isoformat(now), "alert": body}
        tx.session.add(WebhookDelivery(
            job_id=f.job_id or _LANE, user=f.user, server_id=self.server_id, url=self.webhook_url, event=event,
            body=json.dumps(doc, separators=(",", ":"), default=str), status="pending", attempts=0,
            # the delivery task's own clock (the wall clock), whatever the rules were judged at
            next_attempt_at=utcnow(), log=[], created_at=utcnow(),
        ))

    # -- the rules: (findings, rule names judged) --------------------------------------------------
    async def _failure_rate(self, session: Any, now: datetime, rule: dict[str, Any], _: Any) -> tuple[list[Finding], set[str]]:
        since = now - timedelta(minutes=float(rule["window_minutes"]))
        # updated_at ≥ completed_at for an ended job: the index on updated_at narrows the read
        rows = (await session.execute(
            sa.select(JobRecord.user,
                      sa.func.count().filter(JobRecord.status == "COMPLETED"),
                      sa.func.count().filter(JobRecord.status == "FAILED"))
            .where(JobRecord.updated_at >= since, JobRecord.completed_at >= since,
                   JobRecord.status.in_(("COMPLETED", "FAILED")))
            .group_by(JobRecord.user)
        )).all()
        found = []
        for user, done, failed in rows:
            total = done + failed
            if total >= int(rule["min_jobs"]) and failed / total >= float(rule["threshold"]):
                found.append(Finding("failure_rate", user, user, None, {
                    "failed": failed, "completed": done, "failure_rate": round(failed / total, 6),
                    "window_minutes": rule["window_minutes"], "threshold": rule["threshold"]}))
        return found, {"failure_rate"}

    async def _queue_wait(self, session: Any, now: datetime, rule: dict[str, Any], _: Any) -> tuple[list[Finding], set[str]]:
        limit = timedelta(minutes=float(rule["minutes"]))
        rows = (await session.execute(
            sa.select(JobRecord.id, JobRecord.user, JobRecord.status, JobRecord.created_at)
            .where(JobRecord.server_id == self.server_id, JobRecord.status.in_(("QUEUED", "QUEUING")),
                   JobRecord.created_at < now - limit)
        )).all()
        return [Finding("queue_wait", job_id, user, job_id, {
            "status": status, "waited_minutes": round((now - created).total_seconds() / 60, 3),
            "minutes": rule["minutes"]}) for job_id, user, status, created in rows], {"queue_wait"}

    async def _budget(self, session: Any, now: datetime, rule: dict[str, Any], open_users: set[str]) -> tuple[list[Finding], set[str]]:
        # Only users whose jobs changed since the last look (and those with an alert open) can change state.
        query = sa.select(JobRecord.user).distinct()
        if self._budget_seen is not None:
            query = query.where(JobRecord.updated_at >= self._budget_seen - timedelta(seconds=5))
        users = set((await session.scalars(query)).all()) | open_users
        self._budget_seen = now
        levels = sorted(float(level) for level in rule["levels"])
        names = {f"budget_{level:g}" for level in levels}
        found: list[Finding] = []
        candidates = []
        for user in sorted(users):
            budget = self.budgets.budget_for(user)
            if budget is not None and budget > 0:
                candidates.append((user, budget))
        for i in range(0, len(candidates), 900):
            chunk = dict(candidates[i:i + 900])
            used = dict((await session.execute(
                sa.select(JobRecord.user, sa.func.coalesce(sa.func.sum(JobRecord.su_charged), 0.0))
                .where(JobRecord.user.in_(list(chunk))).group_by(JobRecord.user)
            )).all())
            for user, budget in chunk.items():
                spent = float(used.get(user) or 0.0)
                for level in levels:
                    if spent >= budget * level / 100:
                        found.append(Finding(f"budget_{level:g}", user, user, None, {
                            "used_su": round(spent, 6), "budget_su": budget, "level_percent": level,
                            "used_percent": round(100 * spent / budget, 3)}))
        # every open budget alert's user is among those looked at, so "not found" means "cleared"
        return found, names

    async def _gpu_idle(self, session: Any, now: datetime, rule: dict[str, Any], _: Any) -> tuple[list[Finding], set[str]]:
        window = timedelta(minutes=float(rule["minutes"]))
        jobs = (await session.execute(
            sa.select(JobRecord.id, JobRecord.user).where(
                JobRecord.server_id == self.server_id, JobRecord.status == "RUNNING",
                JobRecord.started_at <= now - window)
        )).all()
        found: list[Finding] = []
        owners = dict(jobs)
        ids = list(owners)
        for i in range(0, len(ids), 900):
            rows = (await session.execute(
                sa.select(JobSample.job_id, sa.func.max(JobSample.utilization), sa.func.count())
                .where(JobSample.job_id.in_(ids[i:i + 900]), JobSample.kind == "gpu", JobSample.ts >= now - window)
                .group_by(JobSample.job_id)
            )).all()
            for job_id, peak, n in rows:
                if n and peak < float(rule["utilization"]):
                    found.append(Finding("gpu_idle", job_id, owners[job_id], job_id, {
                        "max_utilization": round(float(peak), 3), "samples": int(n),
                        "minutes": rule["minutes"], "utilization": rule["utilization"]}))
        return found, {"gpu_idle"}
