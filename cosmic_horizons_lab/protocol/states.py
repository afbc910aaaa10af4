"""The job lifecycle: the one state machine every status change goes through.

``QUEUED → QUEUING → RUNNING → COMPLETED | FAILED | CANCELLED``. QUEUED is
ours (waiting for a slot, a parent or a reachable backend); QUEUING means the
backend has it but it does not run yet. A job may fail or be cancelled from
any live state, and may go back to QUEUED for a retry; a running job goes back
to QUEUING when the backend requeues it (Slurm: preemption with requeue, a node
failure, ``scontrol requeue``); terminal states never change.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "QUEUED"
    QUEUING = "QUEUING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
ACTIVE = frozenset({Status.QUEUING, Status.RUNNING})
#: Every state a job is in until it ends, in lifecycle order.
LIVE = (Status.QUEUED, Status.QUEUING, Status.RUNNING)

_ALLOWED: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.QUEUING, Status.RUNNING, Status.FAILED, Status.CANCELLED}),
    # A fast job can finish between two polls: QUEUING may go straight to an end.
    Status.QUEUING: frozenset(
        {Status.RUNNING, Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.QUEUED}
    ),
    Status.RUNNING: frozenset(
        {Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.QUEUED, Status.QUEUING}
    ),
}

#: The event type that records arrival in each state.
EVENT_FOR: dict[Status, str] = {
    Status.QUEUED: "job.queued",
    Status.QUEUING: "job.queuing",
    Status.RUNNING: "job.running",
    Status.COMPLETED: "job.completed",
    Status.FAILED: "job.failed",
    Status.CANCELLED: "job.cancelled",
}


#: The event a new job's life starts with (its status is QUEUED).
SUBMITTED_EVENT = "job.submitted"


def can_transition(current: str, target: str) -> bool:
    return Status(target) in _ALLOWED.get(Status(current), frozenset())


def is_terminal(status: str) -> bool:
    return Status(status) in TERMINAL
