"""Running ``sbatch``, ``squeue``, ``sacct``, ``scancel`` and ``sinfo``.

Every command runs as an asyncio subprocess with a timeout, so a slow controller
never blocks the server's event loop. Command paths are traitlets (TACC wraps the
Slurm commands in scripts), and each may carry arguments
(``c.SlurmBackend.sbatch_command = "runuser -u alice -- sbatch"``).

What a failing command printed decides what the caller may do next, so it is sorted
here, once: an outage (controller, munge or slurmdbd unreachable, a timeout) is
:class:`BackendUnavailable`, which keeps jobs as they are and retries later; a
refusal is :class:`SlurmPermissionError`; anything else a :class:`SlurmCommandError`.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cosmic_horizons_lab.backends.base import BackendUnavailable
from cosmic_horizons_lab.backends.slurm.parsing import (
    SACCT_FIELDS,
    SINFO_GPU_FORMAT,
    QueueEntry,
    SqueueError,
    parse_ids_named,
    parse_sacct,
    parse_sbatch_id,
    parse_squeue_json,
)

if TYPE_CHECKING:
    import logging

    from cosmic_horizons_lab.backends.slurm.backend import SlurmBackend

# ----------------------------------------------------------------------------- errors


class SlurmCommandError(RuntimeError):
    """A Slurm command answered with an error that is not an outage."""

    def __init__(self, argv: list[str], returncode: int | None, stderr: str, stdout: str = ""):
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.stdout = stdout
        name = Path(argv[0]).name if argv else "slurm"
        super().__init__(f"{name} failed (exit {returncode}): {self.stderr or stdout.strip()}")


class SlurmPermissionError(SlurmCommandError, PermissionError):
    """Slurm refused: the job belongs to another user (``Access/permission denied``)."""


class SlurmSubmitError(SlurmCommandError, ValueError):
    """``sbatch`` rejected the job itself (bad partition, account, GRES...): retrying won't help."""


#: stderr fragments that mean "the controller (or its auth) cannot be reached now".
_UNAVAILABLE_PATTERNS = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "zero bytes were transmitted",
    "communication connection failure",
    "backup controller in standby",
    "temporarily unable",
    "resource temporarily unavailable",
    "transport endpoint",
    "unable to establish",
    "could not establish a configuration source",
    "protocol authentication error",
    "munge",
    "slurmdbd",
    "slurm_persist_conn",
    "connection timed out",
    "timed out",
)
_PERMISSION_PATTERNS = ("permission denied", "access denied", "not authorized", "user not authorized")
#: sacct answers that mean "there is no accounting here at all" (not an outage).
_NO_ACCOUNTING_PATTERNS = ("accounting storage is disabled", "not running a supported accounting")
#: Names counted in ``command_counts`` even when a wrapper (``env squeue``) runs them.
_SLURM_COMMANDS = {"sbatch", "squeue", "sacct", "scancel", "sinfo", "scontrol"}


def _is_unavailable(text: str) -> bool:
    low = text.lower()
    return any(p in low for p in _UNAVAILABLE_PATTERNS)


# ----------------------------------------------------------------------------- the commands


class SlurmCommands:
    """The Slurm command line as the backend's traitlets configure it.

    It reads the traitlets of ``settings`` (the backend) on every call, so a changed
    setting takes effect at once. It also remembers which accounting answers
    (``accounting``), because finding out costs a failing ``sacct`` call.
    """

    def __init__(self, settings: SlurmBackend, counts: dict[str, int]) -> None:
        self._s = settings
        #: Every Slurm command run, by name (the backend's ``command_counts``).
        self.counts = counts
        #: "sacct" (slurmdbd), "jobcomp" (sacct -c), "none"
        self.accounting = "sacct"

    @property
    def log(self) -> logging.Logger:
        return self._s.log  # type: ignore[return-value]

    def argv(self, command: str, *args: str) -> list[str]:
        return [*shlex.split(command), *args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self._s.slurm_conf:
            env["SLURM_CONF"] = self._s.slurm_conf
        return env

    async def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """Run one command; (returncode, stdout, stderr). Outages raise BackendUnavailable."""
        name = Path(argv[0]).name
        key = next((Path(a).name for a in argv if Path(a).name in _SLURM_COMMANDS), name)
        self.counts[key] = self.counts.get(key, 0) + 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env(),
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise BackendUnavailable(f"cannot run {argv[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            proc.kill()
            await proc.wait()
            raise BackendUnavailable(f"{key} did not answer within {timeout:g}s") from exc
        except asyncio.CancelledError:
            proc.kill()
            raise
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    def fail(self, argv: list[str], rc: int, out: str, err: str) -> NoReturn:
        """Raise what a failed command means: an outage, a refusal or another error."""
        text = f"{err}\n{out}"
        if _is_unavailable(text):
            raise BackendUnavailable(err.strip() or out.strip() or f"{argv[0]} exited {rc}")
        low = text.lower()
        if any(p in low for p in _PERMISSION_PATTERNS):
            raise SlurmPermissionError(argv, rc, err, out)
        raise SlurmCommandError(argv, rc, err, out)

    # ------------------------------------------------------------------ sbatch

    async def sbatch(self, script: Path, job_name: str, unique_name: bool) -> str:
        """Submit ``script``; the Slurm job id. A rejected job is :class:`SlurmSubmitError`."""
        argv = self.argv(self._s.sbatch_command, "--parsable", str(script))
        try:
            rc, out, err = await self.run(argv, self._s.submit_timeout)
        except BackendUnavailable as exc:
            # sbatch timed out: it may have submitted the job all the same. Look for it by
            # its (unique) name, so that a retry does not run the job twice.
            if not unique_name or "did not answer" not in str(exc):
                raise
            found = await self.find_by_name(job_name)
            if found is None:
                raise
            self.log.warning("sbatch timed out but job %s (%s) was submitted", found, job_name)
            return found
        if rc != 0:
            text = f"{err}\n{out}"
            if _is_unavailable(text):
                raise BackendUnavailable(err.strip() or out.strip())
            if any(p in text.lower() for p in _PERMISSION_PATTERNS):
                raise SlurmPermissionError(argv, rc, err, out)
            raise SlurmSubmitError(argv, rc, err, out)
        job_id = parse_sbatch_id(out)
        if job_id is None:
            raise SlurmCommandError(argv, rc, f"unexpected sbatch answer {out!r}", out)
        return job_id

    async def find_by_name(self, job_name: str) -> str | None:
        """The id of the one job called ``job_name`` (array id for an array), if squeue has it."""
        argv = self.argv(
            self._s.squeue_command, "--noheader", "--states=all", f"--name={job_name}", "--format=%F|%j"
        )
        try:
            rc, out, _ = await self.run(argv, self._s.command_timeout)
        except BackendUnavailable:
            return None
        ids = parse_ids_named(out, job_name)
        if rc != 0 or len(ids) != 1:
            return None
        found = ids.pop()
        return found if found.isdigit() else None

    async def comments(self) -> dict[str, str] | None:
        """Job (or array) id → ``--comment`` of every job squeue still holds, ended ones too;
        None when squeue cannot answer (an outage raises BackendUnavailable)."""
        argv = self.argv(self._s.squeue_command, "--noheader", "--states=all", "--format=%F|%k")
        rc, out, err = await self.run(argv, self._s.command_timeout)
        if rc != 0:
            self.fail(argv, rc, out, err)
        found: dict[str, str] = {}
        for line in out.splitlines():
            job, sep, comment = line.partition("|")
            if sep and job.strip().isdigit():
                found[job.strip()] = comment.strip()
        return found

    async def accounted_comments(self, days: int = 7) -> dict[str, str]:
        """The same from accounting (jobs squeue has forgotten), where slurmdbd keeps comments;
        empty without accounting."""
        if self.accounting != "sacct":
            return {}
        argv = self.argv(self._s.sacct_command, "--noheader", "--parsable2", "--allocations",
                         f"--starttime=now-{days}days", "--format=JobIDRaw,Comment")
        rc, out, _ = await self.run(argv, self._s.command_timeout)
        if rc != 0:
            return {}
        found: dict[str, str] = {}
        for line in out.splitlines():
            job, sep, comment = line.partition("|")
            job = job.strip().split("_", 1)[0]
            if sep and job.isdigit() and comment.strip():
                found.setdefault(job, comment.strip())
        return found

    # ------------------------------------------------------------------ squeue, sacct

    async def squeue(self) -> list[QueueEntry]:
        """The whole queue (as ``squeue_args`` narrows it) from one ``squeue --json`` call.

        An answer that is no queue (``errors`` in it, no JSON) is an outage: reading it
        as an empty queue would call every job lost.
        """
        argv = self.argv(self._s.squeue_command, "--json", *self._s.squeue_args)
        rc, out, err = await self.run(argv, self._s.command_timeout)
        if rc != 0:
            self.fail(argv, rc, out, err)
        try:
            return parse_squeue_json(out)
        except SqueueError as exc:
            raise BackendUnavailable(f"squeue: {exc}") from exc
        except ValueError as exc:
            raise BackendUnavailable(f"squeue answered no JSON: {exc}: {err.strip()[:200]}") from exc

    async def sacct(self, ids: list[str]) -> dict[str, dict[str, str]] | None:
        """Rows for ids from accounting; None when accounting cannot answer now.

        Without slurmdbd (``sacct``: "accounting storage is disabled") it falls back to
        the job completion log (``sacct -c``, ``JobCompType=jobcomp/filetxt``), which
        knows plain jobs by id but not array elements; without either, ``{}``.
        """
        rows: dict[str, dict[str, str]] = {}
        if self.accounting == "none":
            return rows
        if self.accounting == "jobcomp":
            ids = [i for i in ids if "_" not in i]  # the completion log has no array ids
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            extra = ["--completion"] if self.accounting == "jobcomp" else ["--allocations"]
            argv = self.argv(
                self._s.sacct_command,
                "--parsable2",
                "--noheader",
                *extra,
                f"--format={','.join(SACCT_FIELDS)}",
                f"--jobs={','.join(chunk)}",
            )
            try:
                rc, out, err = await self.run(argv, self._s.command_timeout)
            except BackendUnavailable as exc:
                self.log.warning("sacct unavailable: %s", exc)
                return None
            if rc != 0:
                low = err.lower()
                if any(p in low for p in _NO_ACCOUNTING_PATTERNS) or self.accounting == "jobcomp":
                    if self.accounting == "sacct" and self._s.sacct_completion_fallback:
                        self.log.warning("no Slurm accounting (%s): using sacct -c", err.strip())
                        self.accounting = "jobcomp"
                        return await self.sacct(ids)
                    self.log.warning("no Slurm accounting: %s", err.strip())
                    self.accounting = "none"
                    return {}  # nothing will ever be found there
                self.log.warning("sacct failed (exit %s): %s", rc, err.strip()[:300])
                return None
            rows.update(parse_sacct(out))
        return rows

    # ------------------------------------------------------------------ scancel

    async def scancel(self, backend_id: str) -> bool:
        """Ask Slurm to end one job: True when asked, False when it had ended already."""
        argv = self.argv(self._s.scancel_command, backend_id)
        rc, out, err = await self.run(argv, self._s.command_timeout)
        # scancel exits 0 for an unknown id but prints errors for refused ones with some versions
        if rc != 0 or "error" in err.lower():
            low = err.lower()
            if "invalid job id" in low or "already completing or completed" in low:
                return False  # gone already: the next poll reports how it ended
            self.fail(argv, rc or 1, out, err)
        return True

    async def scancel_quietly(self, ids: list[str]) -> None:
        """``scancel`` that only logs a failure: for clean-ups nobody waits on."""
        try:
            rc, out, err = await self.run(self.argv(self._s.scancel_command, *ids), self._s.command_timeout)
            if rc != 0:
                self.log.warning("scancel of jobs whose dependency failed: %s", err.strip())
        except BackendUnavailable as exc:
            self.log.warning("scancel of jobs whose dependency failed: %s", exc)

    # ------------------------------------------------------------------ sinfo

    async def sinfo_gpus(self) -> str:
        """One ``sinfo`` line per node and partition, for :func:`parsing.parse_sinfo_gpus`."""
        argv = self.argv(self._s.sinfo_command, "--Node", "--noheader", f"--Format={SINFO_GPU_FORMAT}")
        rc, out, err = await self.run(argv, self._s.command_timeout)
        if rc != 0:
            self.fail(argv, rc, out, err)
        return out

    async def sinfo_partitions(self) -> tuple[int, str, str]:
        """``sinfo`` of the partitions, as it answered: a health check reports, never raises."""
        argv = self.argv(self._s.sinfo_command, "--noheader", "--format=%P %a %D %T")
        return await self.run(argv, self._s.command_timeout)
