"""The Slurm backend: jobs as ``sbatch`` batch scripts that run the executor.

Submission writes a batch script into the job directory and hands it to
``sbatch --parsable``; the Slurm job id (``"1234"``, or ``"1234_5"`` for an
element of an array) is the job's backend id. State comes from polling: one
``squeue --json`` call for every active job per interval (never one call per
job), and one ``sacct --parsable2`` call for the jobs that have left the queue
or just ended there (for their exit code and who cancelled them). Terminal
states are cached and never asked for again.

This module is the configurable (its traitlets are the ``c.SlurmBackend.*``
settings users write) and the :class:`Backend` methods; the work is done by its
neighbours, each of which can be read (and tested) alone: ``script`` writes the
batch scripts, ``commands`` runs Slurm's commands, ``parsing`` reads what they
print, ``states`` maps Slurm's states onto ours, ``tracking`` remembers each job
between polls and ``poll`` puts a poll together.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

from traitlets import Bool, Dict, Float, Integer, List, Unicode

from cosmic_horizons_lab.backends.base import Backend, BackendJobState, BackendUnavailable, GpuPool, LaunchSpec
import cosmic_horizons_lab.backends.slurm.script as scripts
import cosmic_horizons_lab.backends.slurm.user_script as user_script
from cosmic_horizons_lab.backends.slurm.commands import SlurmCommands
from cosmic_horizons_lab.backends.slurm.parsing import parse_partitions, parse_sinfo_gpus
from cosmic_horizons_lab.backends.slurm.poll import Poller
from cosmic_horizons_lab.backends.slurm.states import map_slurm_state
from cosmic_horizons_lab.backends.slurm.tracking import JobTable
from cosmic_horizons_lab.protocol.jobdir import read_launch_token


class SlurmBackend(Backend):
    """Run jobs on a Slurm cluster with ``sbatch``; watch them with ``squeue`` and ``sacct``."""

    name = "slurm"

    # --- where and how jobs are submitted
    partition = Unicode("", config=True, help="Slurm partition (--partition); empty: the cluster's default.")
    account = Unicode("", config=True, help="Allocation/account to charge (--account), e.g. a TACC project.")
    qos = Unicode("", config=True, help="Quality of service (--qos); empty: the account's default.")
    gres_type = Unicode(
        "gpu",
        config=True,
        help="GRES name (and optional type) GPUs are requested as: 'gpu' gives --gres=gpu:N, "
        "'gpu:a100' gives --gres=gpu:a100:N. Also the GRES counted by resources().",
    )
    extra_directives = List(
        Unicode(),
        config=True,
        help="More sbatch options for every job, written as #SBATCH lines after the others "
        "(so they win), e.g. ['--mem=32G', '--constraint=a100', '--export=NONE'].",
    )
    agent_defaults = Dict(
        config=True,
        help="Per-agent sbatch options: {agent: {option: value}}, e.g. "
        "{'AlphaCal': {'partition': 'gpu-a100', 'mem': '64G', 'time': '04:00:00'}}. "
        "Applied after the global options; a job's own gpu_count and max_runtime still win. "
        "A value of None or True writes the bare flag (--exclusive).",
    )
    default_time_limit = Unicode(
        "",
        config=True,
        help="--time for jobs without max_runtime (Slurm syntax, e.g. '02:00:00'); empty: the partition's default.",
    )
    job_name_template = Unicode(
        "chl-{agent}-{job_id}", config=True, help="--job-name; fields: {agent}, {job_id}, {user}, {name}."
    )
    script_preamble = List(
        Unicode(),
        config=True,
        help="Shell lines run in the batch script before the executor, e.g. "
        "['module load cuda/12.2', 'source /work/project/env.sh'].",
    )
    kill_on_invalid_dependency = Bool(
        True,
        config=True,
        help="Submit pipeline children with --kill-on-invalid-dep=yes so Slurm cancels a child whose "
        "parent failed (it would otherwise pend forever with DependencyNeverSatisfied).",
    )
    cancel_unsatisfiable = Bool(
        True,
        config=True,
        help="scancel jobs found pending with DependencyNeverSatisfied (reported CANCELLED, "
        "reason dependency_failed) so they do not sit in the queue.",
    )
    max_array_size = Integer(
        1000, config=True, help="Largest job array submitted at once (Slurm's MaxArraySize is 1001 by default)."
    )

    # --- commands (TACC and others wrap them in scripts)
    sbatch_command = Unicode("sbatch", config=True, help="sbatch, with optional leading arguments (shell syntax).")
    squeue_command = Unicode("squeue", config=True, help="squeue command (shell syntax).")
    sacct_command = Unicode("sacct", config=True, help="sacct command (shell syntax).")
    scancel_command = Unicode("scancel", config=True, help="scancel command (shell syntax).")
    sinfo_command = Unicode("sinfo", config=True, help="sinfo command (shell syntax).")
    slurm_conf = Unicode(
        "", config=True, help="SLURM_CONF for the commands; empty: inherit the server's environment."
    )
    squeue_args = List(
        Unicode(),
        ["--me"],
        config=True,
        help="Arguments added to 'squeue --json' to keep its answer small (newer Slurm honours "
        "--me; 22.05 ignores filters with --json and the backend filters itself).",
    )

    # --- timing
    command_timeout = Float(30.0, config=True, help="Seconds a squeue/sacct/sinfo/scancel call may take.")
    submit_timeout = Float(
        60.0,
        config=True,
        help="Seconds an sbatch call may take before the submission is called unavailable (and retried).",
    )
    min_poll_interval = Float(
        2.0,
        config=True,
        help="Fewest seconds between two squeue calls: poll() more often answers from the last "
        "snapshot, so Slurm sees at most one squeue per interval whatever the number of jobs or callers.",
    )
    poll_backoff_initial = Float(
        2.0, config=True, help="After a failed squeue, seconds before the next try; doubles on each failure."
    )
    poll_backoff_max = Float(60.0, config=True, help="Longest wait between squeue tries while Slurm is down.")
    lost_grace_seconds = Float(
        60.0,
        config=True,
        help="How long a job may be missing from both squeue and sacct (accounting lags the "
        "controller) before it is reported FAILED with reason 'lost'.",
    )
    accounting_grace_seconds = Float(
        10.0,
        config=True,
        help="A job the queue shows CANCELLED is held back this long for its accounting record, "
        "which alone says who cancelled it; after that the queue's word is final.",
    )
    sacct_completion_fallback = Bool(
        True,
        config=True,
        help="Without slurmdbd, read ended jobs from the job completion log (sacct -c; needs "
        "JobCompType=jobcomp/filetxt): exit codes of plain jobs, not of array elements.",
    )
    terminal_cache_size = Integer(
        100_000,
        config=True,
        help="Terminal states remembered (never asked of Slurm again); the oldest go first.",
    )
    gpu_memory_mb = Dict(
        config=True,
        help="GPU memory per GRES type for resources(), e.g. {'a100': 40960, 'h100': 81920} "
        "(Slurm does not know it).",
    )

    def __init__(self, *, work_dir: Path, python: str, **kwargs: Any) -> None:
        super().__init__(work_dir=work_dir, python=python, **kwargs)
        #: Every Slurm command run, by name (benchmarks and tests read it).
        self.command_counts: dict[str, int] = {}
        self._commands = SlurmCommands(self, self.command_counts)
        self._jobs = JobTable(self)
        self._poller = Poller(self, self._commands, self._jobs)
        #: "squeue"/"sacct" → (when read, job id → comment), for find_launch
        self._comment_cache: dict[str, tuple[float, dict[str, str]]] = {}

    @property
    def _job_dirs(self) -> dict[str, Path]:
        """Job directories by backend id, where logs tell an OOM kill; an attribute of the
        backend still, because tests point a job at its directory by writing into it."""
        return self._jobs.job_dirs

    @property
    def _accounting(self) -> str:
        """Which accounting answers: "sacct" (slurmdbd), "jobcomp" (sacct -c) or "none";
        known after the first lookup (health() reports it, tests read it)."""
        return self._commands.accounting

    def supported_features(self) -> set[str]:
        return {"cancel", "arrays", "dependencies"}

    # ------------------------------------------------------------------ submission

    def render_script(self, spec: LaunchSpec) -> str:
        """The batch script for one job (written to ``<job_dir>/slurm.sbatch``)."""
        rendered = scripts.render_script(self, spec)
        if spec.agent == user_script.AGENT:  # a user's sbatch script: its #SBATCH lines apply too
            directives = user_script.user_script_directives(Path(spec.job_dir))
            rendered = user_script.with_user_directives(rendered, directives, len(self.extra_directives))
        return rendered

    def render_array_script(self, specs: list[LaunchSpec], array_dir: Path, indices: str) -> str:
        """One batch script for many jobs: element i runs ``specs[i]`` in its own job dir."""
        return scripts.render_array_script(self, specs, array_dir, indices)

    def _unique_names(self) -> bool:
        """Whether a job's name finds it in the queue (a timed-out sbatch is then looked
        for, instead of being submitted twice)."""
        return "{job_id}" in self.job_name_template

    async def adopt(self, backend_id: str, spec: LaunchSpec) -> None:
        """Re-attach to a job submitted before a restart: only what poll() reads locally."""
        self._jobs.adopt(backend_id, spec)

    async def find_launch(self, spec: LaunchSpec) -> str | None:
        """The Slurm job (or array element) whose ``--comment`` carries ``spec.launch_token``.

        The job directory first (the batch script's first act writes the token with its Slurm
        id), then squeue (pending jobs, and ended ones for MinJobAge), then accounting (where
        slurmdbd keeps comments). Found nowhere: no job of that sbatch ever started, nor can it
        start any more (it is not in the queue), so the job may be submitted again.
        """
        if not spec.launch_token:
            return None
        found = read_launch_token(Path(spec.job_dir))
        if found is not None and found[0] == spec.launch_token:
            self._jobs.adopt(found[1], spec)
            self.log.info("Slurm job %s adopted for %s (its job directory)", found[1], spec.job_id)
            return found[1]
        base, _, index = spec.launch_token.rpartition(".")
        if not base:  # a job of its own: its token has no index
            base, index = spec.launch_token, ""
        for source in ("squeue", "sacct"):
            comments = await self._launch_comments(source)
            for job_id, comment in comments.items():
                parsed = scripts.parse_launch_comment(comment)
                if parsed is None:
                    continue
                token, indices = parsed
                if indices is None and token == spec.launch_token:
                    backend_id = job_id
                elif indices is not None and token == base and index.isdigit() and int(index) in indices:
                    backend_id = f"{job_id}_{indices.index(int(index))}"
                else:
                    continue
                self._jobs.adopt(backend_id, spec)
                self.log.info("Slurm job %s adopted for %s (launch %s)", backend_id, spec.job_id, spec.launch_token)
                return backend_id
        return None

    async def _launch_comments(self, source: str) -> dict[str, str]:
        """Job id → comment from squeue or sacct, read once for all the launches one
        reconciliation looks for (a restart may leave a whole batch of them)."""
        cached = self._comment_cache.get(source)
        if cached is not None and time.monotonic() - cached[0] < 2.0:
            return cached[1]
        read = self._commands.comments if source == "squeue" else self._commands.accounted_comments
        comments = await read() or {}
        self._comment_cache[source] = (time.monotonic(), comments)
        return comments

    async def submit(self, spec: LaunchSpec) -> str:
        job_dir = Path(spec.job_dir)
        script = job_dir / "slurm.sbatch"
        script.write_text(self.render_script(spec), encoding="utf-8")
        backend_id = await self._commands.sbatch(script, scripts.job_name(self, spec), self._unique_names())
        self._jobs.remember(backend_id, spec)
        self.log.info("Slurm job %s submitted for %s", backend_id, spec.job_id)
        return backend_id

    async def submit_array(self, specs: list[LaunchSpec], parallel_limit: int | None) -> list[str]:
        """Submit jobs of one agent as Slurm job arrays (``--array=0-N%limit``).

        Returns one backend id per spec, ``"<array id>_<index>"``, in order. Jobs
        that need different GPU counts cannot share an array: they are grouped by
        gpu_count (and parents), one array per group, each with the limit.
        """
        if not specs:
            return []
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, spec in enumerate(specs):
            groups.setdefault((spec.gpu_count, tuple(sorted(spec.after_ok))), []).append(i)
        if len(groups) > 1:
            self.log.warning(
                "submit_array: %d jobs need %d different GPU counts/parents: %d arrays, "
                "the parallel limit applies to each", len(specs), len(groups), len(groups)
            )
        ids: list[str | None] = [None] * len(specs)
        arrays: list[str] = []
        try:
            for members in groups.values():
                for start in range(0, len(members), max(1, self.max_array_size)):
                    chunk = members[start : start + self.max_array_size]
                    chunk_ids = await self._submit_one_array([specs[i] for i in chunk], parallel_limit)
                    arrays.append(chunk_ids[0].split("_", 1)[0])
                    for i, bid in zip(chunk, chunk_ids):
                        ids[i] = bid
        except BaseException:
            # All or nothing: the caller will submit the whole batch again.
            if arrays:
                await self._commands.scancel_quietly(arrays)
            raise
        return [i for i in ids if i is not None]

    async def _submit_one_array(self, specs: list[LaunchSpec], parallel_limit: int | None) -> list[str]:
        script = scripts.write_array_script(self, specs, parallel_limit)
        name = scripts.job_name(self, specs[0], f"array-{script.parent.name}")
        array_id = await self._commands.sbatch(script, name, self._unique_names())
        ids = [f"{array_id}_{i}" for i in range(len(specs))]
        for bid, spec in zip(ids, specs):
            self._jobs.remember(bid, spec)
        scripts.write_element_notes(array_id, script, ids, specs)
        self.log.info("Slurm array %s submitted: %d jobs, limit %s", array_id, len(specs), parallel_limit)
        return ids

    # ------------------------------------------------------------------ polling

    async def poll(self, backend_ids: list[str]) -> dict[str, BackendJobState]:
        """States of many jobs: one squeue call (at most one per min_poll_interval), one sacct
        call for those that left the queue or just ended; terminal states come from a cache.

        Raises :class:`BackendUnavailable` while the controller cannot be reached: the
        caller keeps the states it has (nothing is reported lost during an outage).
        """
        return await self._poller.poll(backend_ids)

    def forget(self, backend_ids: Iterable[str]) -> None:
        """Drop cached terminal states the caller has stored (memory stays bounded)."""
        self._jobs.forget(backend_ids)

    # ------------------------------------------------------------------ cancel

    async def cancel(self, backend_id: str) -> None:
        """``scancel``; the next poll confirms (CANCELLED, detail ``cancelled_by``).

        Raises :class:`SlurmPermissionError` when Slurm refuses (another user's job),
        :class:`BackendUnavailable` when the controller is down.
        """
        if backend_id in self._jobs.terminal:
            return
        # Was it pending? A pending array element that is cancelled leaves no trace at all,
        # and its absence must then read as "cancelled", not as "lost".
        try:
            entry = (await self._poller.snapshot()).lookup(backend_id)
        except BackendUnavailable:
            entry = None
        if not await self._commands.scancel(backend_id):
            return  # gone already: the next poll reports how it ended
        self._jobs.cancel_requested[backend_id] = time.monotonic()
        if entry is not None and map_slurm_state(entry.states, entry.reason)[0] == "QUEUING":
            self._jobs.cancelled_pending.add(backend_id)

    # ------------------------------------------------------------------ resources / health

    async def resources(self) -> list[GpuPool]:
        """GPU pools from ``sinfo``: one per (partition, GPU type)."""
        pools = parse_sinfo_gpus(await self._commands.sinfo_gpus(), self.gres_type)
        return [
            GpuPool(
                name=f"{partition}:{typ}" if typ else partition,
                backend=self.name,
                gpu_model=typ or "gpu",
                total=p["total"],
                free=p["free"],
                memory_mb=self.gpu_memory_mb.get(typ) if typ else None,
                detail={"partition": partition, "nodes": p["nodes"], "gpus_down": p["down"],
                        "default_partition": p["default"]},  # fmt: skip
            )
            for (partition, typ), p in sorted(pools.items())
        ]

    async def health(self) -> dict[str, Any]:
        try:
            rc, out, err = await self._commands.sinfo_partitions()
        except BackendUnavailable as exc:
            return {"ok": False, "backend": self.name, "reason": str(exc)}
        if rc != 0:
            return {"ok": False, "backend": self.name, "reason": (err or out).strip()[:500]}
        partitions = parse_partitions(out)
        info: dict[str, Any] = {"ok": True, "backend": self.name, "partitions": partitions}
        if self.partition and self.partition not in partitions:
            info.update(ok=False, reason=f"partition {self.partition!r} not offered by sinfo")
        if self._poller.last_error:
            info["last_poll_error"] = self._poller.last_error
        info["accounting"] = self._accounting  # sacct, jobcomp (sacct -c), none; known after a lookup
        return info
