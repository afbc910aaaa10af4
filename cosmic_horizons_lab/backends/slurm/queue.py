"""The user's whole Slurm queue: every job ``squeue`` shows for them, not only ours.

The sidebar's queue view shows it (jupyterlab-slurm's users asked for the whole queue next to
their own tools). One ``squeue --me`` call (or ``--user``), with a ``--format`` of the fields the
view needs, separated by ``|`` with the job name last (a name may itself hold a ``|``): the
state, Slurm's reason for a pending job, time used and time limit as Slurm writes them, and the
node count and list. ``--json`` would do as well, but it gives no time used, only start times.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cosmic_horizons_lab.backends.slurm.commands import SlurmCommands

if TYPE_CHECKING:
    from cosmic_horizons_lab.backends.slurm.backend import SlurmBackend

#: id, state, reason, time used, time limit, node count, node list, partition, user, name (last).
QUEUE_FORMAT = "%i|%T|%r|%M|%l|%D|%N|%P|%u|%j"
_FIELDS = QUEUE_FORMAT.count("|")


@dataclass
class SlurmQueueJob:
    """One row of the user's queue, as Slurm writes it (times as ``D-HH:MM:SS``)."""

    id: str
    state: str
    reason: str | None
    time_used: str
    time_limit: str
    nodes: int | None
    nodelist: str | None
    partition: str
    user: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _none(value: str) -> str | None:
    """Slurm writes an absent reason or node list as ``None`` or ``(null)``."""
    return None if value in ("", "None", "(null)", "n/a") else value


def parse_user_queue(text: str) -> list[SlurmQueueJob]:
    """The rows of ``squeue --noheader --format=QUEUE_FORMAT``; lines of another shape are skipped."""
    jobs: list[SlurmQueueJob] = []
    for line in text.splitlines():
        parts = line.strip().split("|", _FIELDS)
        if len(parts) != _FIELDS + 1 or not parts[0]:
            continue
        job_id, state, reason, used, limit, nodes, nodelist, partition, user, name = parts
        jobs.append(SlurmQueueJob(
            id=job_id, state=state, reason=_none(reason), time_used=used, time_limit=limit,
            nodes=int(nodes) if nodes.isdigit() else None, nodelist=_none(nodelist),
            partition=partition, user=user, name=name,
        ))
    return jobs


async def read_user_queue(backend: SlurmBackend, user: str | None = None) -> list[SlurmQueueJob]:
    """Every job the queue holds for ``user`` (default: the server's own account, ``--me``).

    Runs through the backend's own command runner, so its ``squeue_command``, ``slurm_conf``,
    timeout and outage rules (an outage raises ``BackendUnavailable``) apply as to its polls.
    """
    commands = SlurmCommands(backend, backend.command_counts)
    who = ["--me"] if user is None else [f"--user={user}"]
    argv = commands.argv(backend.squeue_command, "--noheader", f"--format={QUEUE_FORMAT}", *who)
    rc, out, err = await commands.run(argv, backend.command_timeout)
    if rc != 0:
        commands.fail(argv, rc, out, err)
    return parse_user_queue(out)
