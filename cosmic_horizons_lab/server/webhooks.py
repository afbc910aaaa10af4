"""Webhooks: a signed POST to a job's ``webhook_url`` when it ends (optionally on every transition).

Delivery is an outbox: a transition hook writes a ``webhook_deliveries`` row
in the same transaction as the status change, so a committed end always has
its delivery owed, even if the server dies the next instant. A delivery task
sends what is due, oldest first and one at a time per job (so a receiver sees
a job's transitions in order), and retries failures (connection refused, a
timeout, any non-2xx) with exponential backoff until ``max_attempts``. Every
attempt is logged on the row (``GET jobs/{id}/webhooks``).

The body is fixed when the row is written — retries send the same bytes —
and is signed at sending time with the user's secret::

    X-Cosmic-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>

A user reads (and creates on first use) their secret with ``GET
webhooks/secret`` and replaces it with ``POST webhooks/secret``.

Delivery is at least once: the row (the intent) commits before any attempt, and the attempt's
outcome commits after it, so a crash in between sends the delivery again after a restart. Every
attempt carries the row's id in ``X-Cosmic-Delivery-Id``, for receivers to drop repeats.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from cosmic_horizons_lab.protocol.clock import isoformat, utcnow
from cosmic_horizons_lab.protocol.states import TERMINAL
from cosmic_horizons_lab.server.api.responses import status_to_json
from cosmic_horizons_lab.server.background import stop_task
from cosmic_horizons_lab.server.store.database import Store, Tx
from cosmic_horizons_lab.server.store.orm import JobRecord, WebhookDelivery, WebhookSecret
from cosmic_horizons_lab.server.tracing import Tracing, traceparent_of

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Cosmic-Signature"
#: The delivery's stable id, the same on every attempt and after a restart: an idempotency key.
DELIVERY_ID_HEADER = "X-Cosmic-Delivery-Id"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``; receivers compute the same and compare."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    """The outbox writer (a transition hook) and the delivery task."""

    def __init__(
        self,
        *,
        store: Store,
        server_id: str,
        api_url: Callable[[], str],
        all_transitions: bool = False,
        max_attempts: int = 10,
        backoff_base: float = 2.0,
        backoff_max: float = 600.0,
        timeout: float = 10.0,
        poll_interval: float = 1.0,
        on_attempt: Callable[[bool, float], None] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.store = store
        #: each attempt is a span ``webhook.deliver`` in the job's trace, sent on as ``traceparent``
        self.tracing = tracing or Tracing.disabled()
        self.server_id = server_id
        self.api_url = api_url
        self.all_transitions = all_transitions
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.on_attempt = on_attempt
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._secrets: dict[str, str] = {}

    # -- the outbox ------------------------------------------------------------------------
    def on_transition(self, tx: Tx, job: JobRecord, previous: str) -> None:
        """Owe a delivery for this transition, in its transaction (orchestrator transition hook)."""
        if not job.webhook_url or not (job.status in TERMINAL or self.all_transitions):
            return
        # The row is written just before the commit, so its body has the job's final figures
        # (the charge, a corrected completed_at) and still commits with the transition.
        pending: list[tuple[JobRecord, str, str]] = tx.session.info.setdefault("webhooks_pending", [])
        if not pending:
            sa.event.listen(tx.session.sync_session, "before_commit", self._write_pending, once=True)
        pending.append((job, job.status, previous))

    def _write_pending(self, session: Any) -> None:
        for job, status, previous in session.info.pop("webhooks_pending", []):
            self._add_delivery(session, job, status, previous)

    def _add_delivery(self, session: Any, job: JobRecord, status: str, previous: str) -> None:
        now = utcnow()
        event = f"job.{status.lower()}"
        body = {
            "id": uuid.uuid4().hex,
            "event": event,
            "previous": previous,
            "job_id": job.id,
            "correlation_id": job.correlation_id,
            "ts": isoformat(now),
            "status": {**status_to_json(job, self.api_url()), "status": status},
            "cost": {"gpu_hours": job.gpu_hours, "cost_usd": job.cost_usd, "su_charged": job.su_charged},
        }
        session.add(WebhookDelivery(
            job_id=job.id, user=job.user, server_id=self.server_id, url=job.webhook_url, event=event,
            body=json.dumps(body, separators=(",", ":"), default=str), status="pending", attempts=0,
            next_attempt_at=now, log=[], created_at=now,
        ))
        try:
            asyncio.get_running_loop().call_later(0.02, self._wake.set)  # after the commit, usually
        except RuntimeError:
            pass

    # -- secrets ---------------------------------------------------------------------------
    async def secret(self, user: str, *, rotate: bool = False) -> dict[str, Any]:
        async with self.store.write() as tx:
            row = await tx.session.get(WebhookSecret, user)
            if row is None or rotate:
                if row is None:
                    row = WebhookSecret(user=user)
                    tx.session.add(row)
                row.secret, row.created_at = secrets.token_hex(32), utcnow()
            value, created = row.secret, row.created_at
        self._secrets[user] = value
        return {"secret": value, "created_at": isoformat(created), "header": SIGNATURE_HEADER,
                "algorithm": "HMAC-SHA256 over the raw request body, hex, prefixed 'sha256='"}

    # -- the delivery log ----------------------------------------------------------------
    async def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        async with self.store.read() as session:
            rows = (await session.scalars(
                sa.select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id)
            )).all()
        return [
            {
                "id": r.id, "event": r.event, "url": r.url, "status": r.status, "attempts": r.attempts,
                "last_status_code": r.last_status_code, "last_error": r.last_error,
                "created_at": isoformat(r.created_at), "delivered_at": isoformat(r.delivered_at),
                "next_attempt_at": isoformat(r.next_attempt_at) if r.status == "pending" else None,
                "log": r.log or [],
            }
            for r in rows
        ]

    # -- delivery ------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery pass failed")

    async def deliver_due(self) -> int:
        """Send each job's oldest pending delivery if it is due; returns how many were attempted."""
        now = utcnow()
        async with self.store.read() as session:
            rows = (await session.scalars(
                sa.select(WebhookDelivery)
                .where(WebhookDelivery.server_id == self.server_id, WebhookDelivery.status == "pending")
                .order_by(WebhookDelivery.id)
                .limit(500)
            )).all()
        heads: dict[str, WebhookDelivery] = {}
        for row in rows:
            heads.setdefault(row.job_id, row)
        due = [r for r in heads.values() if r.next_attempt_at <= now]
        if due:
            async with self.store.read() as session:  # their jobs: the trace each delivery joins
                jobs = {j.id: j for j in (await session.scalars(
                    sa.select(JobRecord).where(JobRecord.id.in_([r.job_id for r in due[:32]])))).all()}
            await asyncio.gather(*(self._attempt(r, jobs.get(r.job_id)) for r in due[:32]))
            if len(due) > 32:
                self._wake.set()
        return len(due)

    async def _secret_of(self, user: str) -> str:
        if user not in self._secrets:
            await self.secret(user)
        return self._secrets[user]

    async def _attempt(self, row: WebhookDelivery, job: JobRecord | None = None) -> None:
        raw = row.body.encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(await self._secret_of(row.user), raw),
            "X-Cosmic-Event": row.event,
            DELIVERY_ID_HEADER: str(row.id),
            "X-Cosmic-Delivery": str(row.id),  # the header's first name, kept for receivers that read it
            "X-Correlation-ID": json.loads(row.body).get("correlation_id") or "",
            "User-Agent": "cosmic-horizons-lab-webhooks",
        }
        span = self.tracing.start_job_span("webhook.deliver", job, kind=SpanKind.CLIENT, attributes={
            "cosmic.webhook.event": row.event, "cosmic.webhook.delivery_id": row.id,
            "cosmic.webhook.attempt": (row.attempts or 0) + 1}) if job is not None else trace.INVALID_SPAN
        traceparent = traceparent_of(span)
        if traceparent:
            headers["traceparent"] = traceparent  # the receiver's work joins the job's trace
        started = time.monotonic()
        code: int | None = None
        error: str | None = None
        try:
            resp = await AsyncHTTPClient().fetch(HTTPRequest(
                row.url, method="POST", body=raw, headers=headers, request_timeout=self.timeout,
                connect_timeout=self.timeout, follow_redirects=False,
            ), raise_error=False)
            code = resp.code
            if code == 599:
                error, code = str(resp.error), None
            elif not 200 <= code < 300:
                error = f"HTTP {code}"
        except Exception as exc:  # refused, reset, DNS: all mean "try again later"
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - started
        ok = error is None
        if code is not None:
            span.set_attribute("http.response.status_code", code)
        if not ok:
            span.set_status(Status(StatusCode.ERROR, error[:500]))
        span.end()
        if self.on_attempt is not None:
            self.on_attempt(ok, elapsed)
        async with self.store.write() as tx:
            current = await tx.session.get(WebhookDelivery, row.id)
            if current is None or current.status != "pending":
                return
            now = utcnow()
            current.attempts += 1
            current.last_status_code, current.last_error = code, error
            current.log = [*(current.log or []), {
                "attempt": current.attempts, "ts": isoformat(now), "status_code": code, "error": error,
                "duration_ms": round(elapsed * 1000, 1),
            }]
            if ok:
                current.status, current.delivered_at = "delivered", now
            elif current.attempts >= self.max_attempts:
                current.status = "failed"
            else:
                delay = min(self.backoff_base * 2 ** (current.attempts - 1), self.backoff_max)
                current.next_attempt_at = now + timedelta(seconds=delay)
        if ok:
            self._wake.set()  # the job's next delivery, if any, may go now
