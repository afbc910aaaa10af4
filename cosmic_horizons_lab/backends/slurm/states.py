"""Slurm's job states translated into ours (see ``docs/slurm.md``)::

    PENDING CONFIGURING REQUEUED REQUEUE_HOLD REQUEUE_FED RESV_DEL_HOLD → QUEUING
    RUNNING COMPLETING SUSPENDED STOPPED SIGNALING STAGE_OUT RESIZING   → RUNNING
    COMPLETED                                                         → COMPLETED
    FAILED NODE_FAIL OUT_OF_MEMORY TIMEOUT BOOT_FAIL DEADLINE PREEMPTED REVOKED → FAILED
    CANCELLED                                                         → CANCELLED
    PENDING with reason DependencyNeverSatisfied, or CANCELLED by it  → CANCELLED (dependency_failed)
    in neither squeue nor sacct                                       → FAILED (lost)

One table for both sources, the queue and accounting, so that a job reads the same
whichever of them answered. A state this table does not know is reported RUNNING
(with reason ``slurm:<state>``): a job is never called finished on a guess. The
last line, "lost", needs the backend's memory of the job, so it is decided when
polling (``poll.py``), not here.
"""

from __future__ import annotations

import pwd
from typing import Any, Iterable

from cosmic_horizons_lab.backends.base import BackendJobState
from cosmic_horizons_lab.backends.slurm.parsing import QueueEntry, parse_exit_status

QUEUING_STATES = {
    "PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
    "POWER_UP_NODE", "UPDATE_DB",
}  # fmt: skip
RUNNING_STATES = {
    "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING",
}  # fmt: skip
FAILED_REASONS = {
    "FAILED": "failed",
    "NODE_FAIL": "node_fail",
    "OUT_OF_MEMORY": "out_of_memory",
    "TIMEOUT": "timeout",
    "BOOT_FAIL": "boot_fail",
    "DEADLINE": "deadline",
    "PREEMPTED": "preempted",
    "REVOKED": "revoked",
}
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
#: Flags that, present in a state list, put a finished-looking job back in the queue.
_REQUEUE_FLAGS = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "REQUEUE_CRON"}
#: The reason Slurm gives a job whose parent ended so that it can never start.
DEPENDENCY_NEVER = "DependencyNeverSatisfied"


def map_slurm_state(states: Iterable[str], slurm_reason: str = "") -> tuple[str, str | None]:
    """(our status, reason) for a Slurm state (a name or the list newer versions give)."""
    names = [s.strip().upper() for s in states if s]
    names = [n.split()[0] for n in names if n]  # "CANCELLED by 1001" → CANCELLED
    if not names:
        return "QUEUING", None
    flags = set(names)
    base = names[0]
    if flags & _REQUEUE_FLAGS:
        return "QUEUING", "requeued"
    if "COMPLETING" in flags:
        return "RUNNING", None
    if base in QUEUING_STATES:
        if slurm_reason == DEPENDENCY_NEVER:
            return "CANCELLED", "dependency_failed"
        return "QUEUING", None
    if base in RUNNING_STATES:
        return "RUNNING", None
    if base == "COMPLETED":
        return "COMPLETED", None
    if base == "CANCELLED":
        if slurm_reason in (DEPENDENCY_NEVER, "Dependency"):
            return "CANCELLED", "dependency_failed"
        return "CANCELLED", "cancelled"
    if base in FAILED_REASONS:
        return "FAILED", FAILED_REASONS[base]
    # An unknown future state: a job is never reported finished on a guess.
    return "RUNNING", f"slurm:{base.lower()}"


#: The "signal" sacct gives a job the cgroup OOM killer ended (ExitCode 0:125); the
#: process itself died of SIGKILL.
_SIG_OOM = 125


def exit_code_of(code: int | None, signal: int | None) -> int | None:
    """One number like a Python ``returncode``: the exit code, or minus the signal."""
    if signal == _SIG_OOM:
        return -9
    if signal:
        return -signal
    return code


def _failed_reason(exit_code: int | None, slurm_reason: str) -> str:
    """Plain FAILED: ``exit_code`` (as the local backend says) for a non-zero exit, else
    Slurm's reason (``JobLaunchFailure``, ``RaisedSignal:9(Killed)``...)."""
    if exit_code is not None and exit_code > 0:
        return "exit_code"
    if slurm_reason and slurm_reason not in ("None", "NonZeroExitCode"):
        return slurm_reason
    return "signal" if exit_code is not None and exit_code < 0 else "failed"


def _user_name(uid: str) -> str:
    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, ValueError):
        return uid


def state_from_queue(e: QueueEntry) -> BackendJobState:
    """A job as ``squeue`` shows it, before the backend adds what it knows of the job."""
    status, reason = map_slurm_state(e.states, e.reason)
    code, sig = parse_exit_status(e.exit_raw)
    detail: dict[str, Any] = {
        "slurm_state": "+".join(e.states),
        "slurm_reason": e.reason,
        "source": "squeue",
    }
    if e.user:
        detail["user"] = e.user
    if e.nodes:
        detail["nodes"] = e.nodes
    if e.partition:
        detail["partition"] = e.partition
    if e.dependency and e.dependency != "(null)":
        detail["dependency"] = e.dependency
    restarts = e.restarts
    if restarts:
        detail["restarts"] = restarts  # requeued (preempted, node failure, scontrol requeue)
        if status == "QUEUING":
            reason = "requeued"  # pending again after running: Slurm drops the REQUEUED flag soon
    state = BackendJobState(status=status, reason=reason, detail=detail)  # type: ignore[arg-type]
    if status in ("COMPLETED", "FAILED"):
        state.exit_code = exit_code_of(code, sig)
        detail["exit_code_raw"] = f"{code}:{sig}" if code is not None else None
    if status == "FAILED" and reason == "failed":
        state.reason = _failed_reason(state.exit_code, e.reason)
    return state


def state_from_sacct(row: dict[str, str]) -> BackendJobState:
    """A job as its accounting row shows it (the only source of who cancelled it), before
    the backend adds what it knows of the job."""
    words = row.get("State", "").split()
    slurm_reason = row.get("Reason", "")
    status, reason = map_slurm_state(words[:1], slurm_reason)
    code, sig = parse_exit_status(row.get("ExitCode"))
    detail: dict[str, Any] = {
        "slurm_state": row.get("State", ""),
        "slurm_reason": slurm_reason,
        "exit_code_raw": row.get("ExitCode", ""),
        "source": "sacct",
    }
    uid = row.get("UID", "")
    if uid.isdigit():  # User can lag behind (it said root for a user's job right after it ended)
        row = {**row, "User": _user_name(uid)}
    for src, dst in (("User", "user"), ("NodeList", "nodes"), ("Partition", "partition"),
                     ("Start", "start"), ("End", "end"), ("Elapsed", "elapsed")):  # fmt: skip
        value = row.get(src)
        if value and value not in ("None assigned", "Unknown", "None"):
            detail[dst] = value
    state = BackendJobState(status=status, reason=reason, detail=detail)  # type: ignore[arg-type]
    if status in ("COMPLETED", "FAILED"):
        state.exit_code = exit_code_of(code, sig)
    if status == "CANCELLED" and len(words) >= 3 and words[1] == "by":
        uid = words[2]
        detail["cancelled_by_uid"] = int(uid) if uid.isdigit() else uid
        detail["cancelled_by"] = _user_name(uid)
    if status == "FAILED" and reason == "failed":
        state.reason = _failed_reason(state.exit_code, slurm_reason)
    return state
