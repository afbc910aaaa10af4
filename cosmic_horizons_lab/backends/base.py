"""The interface every execution backend implements.

A backend runs job directories somewhere (this machine's GPU slots, a Slurm
cluster) and answers questions about them. It never owns truth: the store
does. The orchestrator hands a backend :class:`LaunchSpec`s, polls all active
jobs in one call per interval, and reconciles the answers with the store, on
every interval and after a restart alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from traitlets.config import LoggingConfigurable

BackendStatus = Literal["QUEUING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]


class BackendUnavailable(Exception):
    """The backend cannot be reached now (slurmctld down, ...): retry later, lose nothing."""


@dataclass
class LaunchSpec:
    """What a backend needs to start one job."""

    job_id: str
    job_dir: Path
    agent: str
    user: str
    gpu_count: int
    max_runtime_seconds: int | None
    correlation_id: str
    name: str = ""
    #: Backend ids of parents that must complete first (Slurm ``afterok``).
    after_ok: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: The launch intent committed for this start (``JobRecord.launch_token``): the backend
    #: leaves it where :meth:`Backend.find_launch` can find it (the job directory, Slurm's
    #: ``--comment``).
    launch_token: str = ""


@dataclass
class BackendJobState:
    """One job as the backend sees it now."""

    status: BackendStatus
    exit_code: int | None = None
    #: Why it ended when not COMPLETED: ``timeout``, ``cancelled``, ``lost``, a Slurm reason...
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class GpuPool:
    """A pool of GPUs a job can be sent to (``jobs/resources/available``)."""

    name: str
    backend: str
    gpu_model: str
    total: int
    free: int
    memory_mb: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Backend(LoggingConfigurable):
    """Runs job directories. Implementations: ``local`` and ``slurm``.

    A backend is a traitlets ``Configurable`` with its own config section
    (``c.LocalBackend.slots``, ``c.SlurmBackend.partition``...), created by the
    extension with ``parent=`` the extension app, ``work_dir`` and ``python``
    (the interpreter that runs the executor: the server's own).
    """

    name: str = ""

    def __init__(self, *, work_dir: Path, python: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.work_dir = Path(work_dir)
        self.python = python

    async def start(self) -> None:
        """Acquire what the backend needs (called once at server start)."""

    async def stop(self) -> None:
        """Release it; running jobs keep running (they outlive the server)."""

    def supported_features(self) -> set[str]:
        """What this backend can do, for the UI and the orchestrator to read, not guess.

        Known features: ``cancel``, ``arrays`` (``submit_array``), ``dependencies``
        (parents passed as ``after_ok`` and enforced by the backend itself),
        ``gpu_slots`` (the orchestrator must respect :meth:`free_slots`).
        """
        return {"cancel"}

    def free_slots(self, gpu_count: int) -> int | None:
        """How many more jobs needing ``gpu_count`` GPUs could start now; None: no limit here."""
        return None

    async def submit(self, spec: LaunchSpec) -> str:
        """Start (or enqueue) a job; return the backend's id for it.

        Raises :class:`BackendUnavailable` when it cannot be reached; the job
        then stays QUEUED and is submitted again later.
        """

    async def adopt(self, backend_id: str, spec: LaunchSpec) -> None:
        """Re-attach to a job submitted before a server restart, before it is polled."""

    async def find_launch(self, spec: LaunchSpec) -> str | None:
        """What a launch with ``spec.launch_token`` left behind: its backend id (the job is
        adopted, so poll() sees it), or None when provably nothing was started with it (the
        job may then be launched again, with a fresh token).

        A server that died between committing a launch's intent and recording the backend's
        id calls this after its restart, so that a job is never started twice. Raises
        :class:`BackendUnavailable` when the backend cannot tell now.
        """
        raise NotImplementedError

    async def submit_array(self, specs: list[LaunchSpec], parallel_limit: int | None) -> list[str]:
        """Submit jobs of one agent as one unit; the default submits them one by one."""
        return [await self.submit(spec) for spec in specs]

    async def poll(self, backend_ids: list[str]) -> dict[str, BackendJobState]:
        """The state of many jobs in one call; an id missing from the answer is unknown."""
        raise NotImplementedError

    async def cancel(self, backend_id: str) -> None:
        """Ask the backend to end a job; the next poll confirms it."""
        raise NotImplementedError

    async def resources(self) -> list[GpuPool]:
        """The GPU pools this backend offers."""
        return []

    async def health(self) -> dict[str, Any]:
        """``{"ok": bool, ...}`` with the reason when not ok."""
        return {"ok": True}
