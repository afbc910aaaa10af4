"""The one way a job's status changes, shared by dispatch, reconciliation and cancel.

A change, its event and whatever the hooks write (cost charges, webhook outbox rows) all go
into the caller's transaction, so they commit together and the events publish in order. An
illegal move is logged and refused rather than raised: it means a late or duplicate report
from the backend, which must not break a tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cosmic_horizons_lab.protocol.clock import utcnow
from cosmic_horizons_lab.protocol.states import EVENT_FOR, TERMINAL, Status, can_transition
from cosmic_horizons_lab.server.store.database import Tx
from cosmic_horizons_lab.server.store.orm import JobRecord
from cosmic_horizons_lab.server.tracing import Tracing

log = logging.getLogger(__name__)

#: ``hook(tx, job, previous_status)``, run inside the transaction of every transition.
TransitionHook = Callable[[Tx, JobRecord, str], None]


class Lifecycle:
    def __init__(self, hooks: list[TransitionHook], tracing: Tracing | None = None) -> None:
        #: the list the server appends its hooks to (shared, not copied)
        self.hooks = hooks
        #: each transition is a span ``job.<status>`` in the job's trace
        self.tracing = tracing or Tracing.disabled()

    def transition(
        self,
        tx: Tx,
        job: JobRecord,
        status: Status,
        *,
        reason: str | None = None,
        error: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> bool:
        """Move ``job`` to ``status`` and record the event; False when it is there already or may not go."""
        if job.status == status:
            return False
        if not can_transition(job.status, status):
            log.warning("refused illegal transition %s → %s for job %s", job.status, status, job.id)
            return False
        previous = job.status
        now = utcnow()
        job.status = status.value
        job.updated_at = now
        if status == Status.RUNNING and job.started_at is None:
            job.started_at = now
        if status in TERMINAL:
            job.completed_at = now
            job.reason = reason
            if status == Status.COMPLETED:
                job.progress = 1.0
        elif reason:
            job.reason = reason
        if error:
            job.error = error[:4000]
        body = {"status": job.status, "previous": previous, "progress": job.progress}
        if reason:
            body["reason"] = reason
        if error:
            body["error"] = job.error
        body.update(payload or {})
        tx.emit(EVENT_FOR[status], user=job.user, job=job, payload=body)
        for hook in self.hooks:
            hook(tx, job, previous)
        attributes = {"cosmic.job.status": job.status, "cosmic.job.previous_status": previous}
        if reason:
            attributes["cosmic.job.reason"] = reason
        if error:
            attributes["cosmic.job.error"] = job.error
        self.tracing.start_job_span(EVENT_FOR[status], job, attributes=attributes).end()
        return True
