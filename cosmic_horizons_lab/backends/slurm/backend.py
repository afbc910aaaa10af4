"""The Slurm backend: jobs as ``sbatch`` batch scripts that run the executor.

Submission writes a batch script into the job directory and hands it to
``sbatch --parsable``; the Slurm job id (``"1234"``, or ``"1234_5"`` for an
element of an array) is the job's backend id. State comes from polling: one
``squeue --json`` call for every active job per interval (never one call per
job), and one ``sacct --parsable2`` call for the jobs that have left the queue
or just ended there (for their exit code and who cancelled them). Terminal
states are cached and never asked for again.

Every command runs as an asyncio subprocess with a timeout, so a slow
controller never blocks the server's event loop. Command paths are traitlets
(TACC wraps the Slurm commands in scripts), and each may carry arguments
(``c.SlurmBackend.sbatch_command = "runuser -u alice -- sbatch"``).

Slurm state → our status (see ``docs/slurm.md``)::

    PENDING CONFIGURING REQUEUED REQUEUE_HOLD REQUEUE_FED RESV_DEL_HOLD → QUEUING
    RUNNING COMPLETING SUSPENDED STOPPED SIGNALING STAGE_OUT RESIZING   → RUNNING
    COMPLETED                                                         → COMPLETED
    FAILED NODE_FAIL OUT_OF_MEMORY TIMEOUT BOOT_FAIL DEADLINE PREEMPTED REVOKED → FAILED
    CANCELLED                                                         → CANCELLED
    PENDING with reason DependencyNeverSatisfied, or CANCELLED by it  → CANCELLED (dependency_failed)
    in neither squeue nor sacct                                       → FAILED (lost)
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from traitlets import Bool, Dict, Float, Integer, List, Unicode

from cosmic_horizons_lab.backends.base import Backend, BackendJobState, BackendUnavailable, GpuPool, LaunchSpec

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


def _is_unavailable(text: str) -> bool:
    low = text.lower()
    return any(p in low for p in _UNAVAILABLE_PATTERNS)


# ----------------------------------------------------------------------------- state mapping

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
_DEPENDENCY_NEVER = "DependencyNeverSatisfied"
#: What slurmstepd writes into the job's output when OverMemoryKill (no cgroups) kills it.
_OOM_MARKERS = ("exceeded job memory limit", "oom-kill", "oom_kill", "out of memory")


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
        if slurm_reason == _DEPENDENCY_NEVER:
            return "CANCELLED", "dependency_failed"
        return "QUEUING", None
    if base in RUNNING_STATES:
        return "RUNNING", None
    if base == "COMPLETED":
        return "COMPLETED", None
    if base == "CANCELLED":
        if slurm_reason in (_DEPENDENCY_NEVER, "Dependency"):
            return "CANCELLED", "dependency_failed"
        return "CANCELLED", "cancelled"
    if base in FAILED_REASONS:
        return "FAILED", FAILED_REASONS[base]
    # An unknown future state: a job is never reported finished on a guess.
    return "RUNNING", f"slurm:{base.lower()}"


# ----------------------------------------------------------------------------- parsing helpers


def _num(value: Any) -> int | None:
    """A number from squeue/sinfo JSON: a plain int, or ``{"set", "infinite", "number"}``."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    # NO_VAL / INFINITE sentinels of the C API
    if n in (0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFD):
        return None
    return n


def _strs(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [str(v) for v in value if v not in (None, "")]
    return [str(value)]


def parse_exit_status(value: Any) -> tuple[int | None, int | None]:
    """(exit code, signal) from any shape Slurm gives.

    sacct text ``"3:0"``; squeue JSON of Slurm ≤ 23.02 the raw wait status (768 for
    exit 3); newer ones ``{"status": [...], "return_code": {...}, "signal": {...}}``.
    """
    if value is None or value == "":
        return None, None
    if isinstance(value, str):
        if ":" in value:
            code, _, sig = value.partition(":")
            try:
                return int(code), int(sig)
            except ValueError:
                return None, None
        value = int(value) if value.strip().lstrip("-").isdigit() else None
        if value is None:
            return None, None
    if isinstance(value, dict) and ("return_code" in value or "signal" in value):
        code = _num(value.get("return_code"))
        sig_obj = value.get("signal")
        sig = _num(sig_obj.get("id")) if isinstance(sig_obj, dict) else _num(sig_obj)
        return code, sig or 0
    raw = _num(value)
    if raw is None:
        return None, None
    return (raw >> 8) & 0xFF, raw & 0x7F


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


def _expand_indices(spec: str) -> set[int]:
    """Array task indices from ``"0-5%2"``, ``"[1,3,5-9:2]"``..."""
    spec = spec.strip().strip("[]").split("%", 1)[0]
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        step = 1
        if ":" in part:
            part, _, st = part.partition(":")
            step = int(st) if st.isdigit() else 1
        if "-" in part:
            a, _, b = part.partition("-")
            if a.isdigit() and b.isdigit():
                out.update(range(int(a), int(b) + 1, max(step, 1)))
        elif part.isdigit():
            out.add(int(part))
    return out


@dataclass
class QueueEntry:
    """One job (or the pending remainder of an array) as ``squeue --json`` shows it."""

    job_id: int
    array_job_id: int | None
    array_task_id: int | None
    pending_tasks: set[int]
    states: list[str]
    reason: str
    exit_raw: Any
    user: str
    nodes: str
    partition: str
    dependency: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def key(self) -> str:
        if self.array_job_id and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return str(self.job_id)


class SqueueError(Exception):
    """``squeue --json`` answered with ``errors`` (22.05 exits 0 with the controller down)."""


def parse_squeue_json(text: str) -> list[QueueEntry]:
    """Entries of ``squeue --json`` from Slurm 21.08 to 24.x; raises :class:`SqueueError`."""
    data = json.loads(text)
    errors = [e for e in data.get("errors") or [] if e]
    if errors:
        msgs = "; ".join(
            str(e.get("description") or e.get("error") or e) if isinstance(e, dict) else str(e)
            for e in errors
        )
        raise SqueueError(msgs)
    entries: list[QueueEntry] = []
    for job in data.get("jobs") or []:
        job_id = _num(job.get("job_id"))
        if job_id is None:
            continue
        array_job_id = _num(job.get("array_job_id")) or None
        task_id = _num(job.get("array_task_id"))
        task_string = job.get("array_task_string") or ""
        pending = _expand_indices(task_string) if (task_string and task_id is None) else set()
        dep = job.get("dependency") or ""
        entries.append(
            QueueEntry(
                job_id=job_id,
                array_job_id=array_job_id,
                array_task_id=task_id if array_job_id else None,
                pending_tasks=pending,
                states=_strs(job.get("job_state")),
                reason=str(job.get("state_reason") or ""),
                exit_raw=job.get("exit_code"),
                user=str(job.get("user_name") or job.get("user_id") or ""),
                nodes=str(job.get("nodes") or ""),
                partition=str(job.get("partition") or ""),
                dependency=dep if isinstance(dep, str) else json.dumps(dep),
                raw=job,
            )
        )
    return entries


class QueueSnapshot:
    """The queue at one instant, looked up by backend id (plain or array element)."""

    def __init__(self, entries: list[QueueEntry], taken_at: float) -> None:
        self.taken_at = taken_at
        self.by_key: dict[str, QueueEntry] = {}
        self.arrays: dict[int, list[QueueEntry]] = {}
        for e in entries:
            self.by_key[e.key] = e
            if e.pending_tasks:
                self.arrays.setdefault(e.array_job_id or e.job_id, []).append(e)

    def __len__(self) -> int:
        return len(self.by_key)

    def lookup(self, backend_id: str) -> QueueEntry | None:
        e = self.by_key.get(backend_id)
        if e is not None:
            return e
        base, sep, idx = backend_id.partition("_")
        if sep and base.isdigit() and idx.isdigit():
            for meta in self.arrays.get(int(base), []):
                if int(idx) in meta.pending_tasks:
                    return meta
        return None


SACCT_FIELDS = (
    "JobID", "JobIDRaw", "State", "ExitCode", "DerivedExitCode", "Reason", "User", "NodeList",
    "Partition", "Start", "End", "Elapsed", "UID",
)  # fmt: skip


def parse_sacct(text: str, fields: Iterable[str] = SACCT_FIELDS) -> dict[str, dict[str, str]]:
    """``sacct --parsable2 --noheader`` rows by JobID (``1234``, ``1234_5``, ``1234_[6-9%2]``)."""
    names = list(fields)
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < len(names):
            continue
        row = dict(zip(names, parts))
        job = row["JobID"]
        if "." in job:  # a step (sacct -X should not list them)
            continue
        rows[job] = row  # a requeued job's later record replaces its earlier one
    return rows


def sacct_lookup(rows: dict[str, dict[str, str]], backend_id: str) -> dict[str, str] | None:
    row = rows.get(backend_id)
    if row is not None:
        return row
    base, sep, idx = backend_id.partition("_")
    if sep and idx.isdigit():
        for job, r in rows.items():
            b, s, rest = job.partition("_")
            if b == base and rest.startswith("[") and int(idx) in _expand_indices(rest):
                return r
    return None


def format_time_limit(seconds: int) -> str:
    """``--time`` for a limit in seconds; Slurm counts whole minutes, so round up."""
    minutes = max(1, -(-int(seconds) // 60))
    days, rem = divmod(minutes, 24 * 60)
    hours, mins = divmod(rem, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


_GRES_RE = re.compile(r"^(?P<name>[^:()]+)(?::(?P<type>[^:()]+))?:(?P<count>\d+)")


def parse_gres(text: str, name: str = "gpu") -> dict[str, int]:
    """``gpu:a100:4(S:0-1),gpu:v100:2`` → ``{"a100": 4, "v100": 2}`` (untyped → ``""``)."""
    out: dict[str, int] = {}
    if not text or text in ("(null)", "N/A"):
        return out
    # split on commas that are not inside parentheses
    depth, cur, parts = 0, "", []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in parts:
        m = _GRES_RE.match(part.strip())
        if not m or m.group("name") != name:
            continue
        typ = m.group("type") or ""
        out[typ] = out.get(typ, 0) + int(m.group("count"))
    return out


_USABLE_NODE_STATES = ("idle", "mixed", "allocated", "completing", "planned")
_UNUSABLE_NODE_WORDS = ("drain", "down", "fail", "maint", "unknown", "not_responding", "power", "reboot", "inval")


def _node_usable(state: str) -> bool:
    """Whether a node in this sinfo StateLong (``idle``, ``mixed+drain``, ``down*``...) takes jobs."""
    st = state.lower()
    if any(word in st for word in _UNUSABLE_NODE_WORDS):
        return False
    return st.rstrip("*~#!%$@^-").split("+")[0] in _USABLE_NODE_STATES


# ----------------------------------------------------------------------------- the backend


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
        self._terminal: dict[str, BackendJobState] = {}
        self._last: dict[str, BackendJobState] = {}
        self._missing_since: dict[str, float] = {}
        self._submitted_at: dict[str, float] = {}
        self._job_dirs: dict[str, Path] = {}
        self._after_ok: dict[str, list[str]] = {}
        self._cancel_requested: dict[str, float] = {}
        self._cancelled_pending: set[str] = set()
        # queue said CANCELLED, accounting has no record yet: (first seen, the queue's state)
        self._awaiting_accounting: dict[str, tuple[float, BackendJobState]] = {}
        self._snapshot: QueueSnapshot | None = None
        self._snapshot_lock = asyncio.Lock()
        self._backoff_until = 0.0
        self._backoff = 0.0
        self._last_error = ""
        #: "sacct" (slurmdbd), "jobcomp" (sacct -c), "none"
        self._accounting = "sacct"
        #: Every Slurm command run, by name (benchmarks and tests read it).
        self.command_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ commands

    def supported_features(self) -> set[str]:
        return {"cancel", "arrays", "dependencies"}

    def _argv(self, command: str, *args: str) -> list[str]:
        return [*shlex.split(command), *args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        return env

    async def _run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """Run one command; (returncode, stdout, stderr). Outages raise BackendUnavailable."""
        name = Path(argv[0]).name
        key = next((Path(a).name for a in argv if Path(a).name in _SLURM_COMMANDS), name)
        self.command_counts[key] = self.command_counts.get(key, 0) + 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(),
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

    def _fail(self, argv: list[str], rc: int, out: str, err: str) -> None:
        text = f"{err}\n{out}"
        if _is_unavailable(text):
            raise BackendUnavailable(err.strip() or out.strip() or f"{argv[0]} exited {rc}")
        low = text.lower()
        if any(p in low for p in _PERMISSION_PATTERNS):
            raise SlurmPermissionError(argv, rc, err, out)
        raise SlurmCommandError(argv, rc, err, out)

    # ------------------------------------------------------------------ submission

    def _directives(self, spec: LaunchSpec, *, gpu_count: int, seconds: int | None) -> dict[str, Any]:
        d: dict[str, Any] = {"job-name": self._job_name(spec)}
        for key in ("partition", "account", "qos"):
            value = getattr(self, key)
            if value:
                d[key] = value
        for key, value in (self.agent_defaults.get(spec.agent) or {}).items():
            d[str(key).lstrip("-")] = value
        if gpu_count > 0:
            d["gres"] = f"{self.gres_type}:{gpu_count}"
        if seconds:
            d["time"] = format_time_limit(seconds)
        elif "time" not in d and self.default_time_limit:
            d["time"] = self.default_time_limit
        if spec.after_ok:
            d["dependency"] = "afterok:" + ":".join(spec.after_ok)
            if self.kill_on_invalid_dependency:
                d["kill-on-invalid-dep"] = "yes"
        return d

    def _header(self, directives: dict[str, Any]) -> list[str]:
        lines = ["#!/bin/bash"]
        for key, value in directives.items():
            if value is None or value is True:
                lines.append(f"#SBATCH --{key}")
            elif value is False:
                continue
            else:
                lines.append(f"#SBATCH --{key}={value}")
        lines += [f"#SBATCH {d}" for d in self.extra_directives]
        lines.append("# Generated by cosmic-horizons-lab (SlurmBackend).")
        return lines

    def _job_env_lines(self, spec: LaunchSpec) -> list[str]:
        env = {
            "COSMIC_HORIZONS_CORRELATION_ID": spec.correlation_id,
            "COSMIC_HORIZONS_JOB_ID": spec.job_id,
            **spec.env,
        }
        return [f"export {k}={shlex.quote(str(v))}" for k, v in env.items() if _valid_env_name(k)]

    def _exec_line(self, job_dir: str) -> str:
        return f"exec {shlex.quote(self.python)} -m cosmic_horizons_lab.executor {job_dir}"

    def render_script(self, spec: LaunchSpec) -> str:
        """The batch script for one job (written to ``<job_dir>/slurm.sbatch``)."""
        job_dir = Path(spec.job_dir).resolve()
        d = self._directives(spec, gpu_count=spec.gpu_count, seconds=spec.max_runtime_seconds)
        d["output"] = str(job_dir / "stdout.log")
        d["open-mode"] = "append"  # a requeued job keeps its first run's log
        lines = self._header(d)
        lines += self._job_env_lines(spec)
        lines.append(f"cd {shlex.quote(str(job_dir))} || exit 2")
        lines += list(self.script_preamble)
        lines.append(self._exec_line(shlex.quote(str(job_dir))))
        return "\n".join(lines) + "\n"

    async def _sbatch(self, script: Path, job_name: str, unique_name: bool) -> str:
        argv = self._argv(self.sbatch_command, "--parsable", str(script))
        try:
            rc, out, err = await self._run(argv, self.submit_timeout)
        except BackendUnavailable as exc:
            # sbatch timed out: it may have submitted the job all the same. Look for it by
            # its (unique) name, so that a retry does not run the job twice.
            if not unique_name or "did not answer" not in str(exc):
                raise
            found = await self._find_by_name(job_name)
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
        first = out.strip().splitlines()[-1] if out.strip() else ""
        job_id = first.split(";", 1)[0].strip()
        if not job_id.isdigit():
            raise SlurmCommandError(argv, rc, f"unexpected sbatch answer {out!r}", out)
        return job_id

    async def _find_by_name(self, job_name: str) -> str | None:
        """The id of the one job called ``job_name`` (array id for an array), if squeue has it."""
        argv = self._argv(
            self.squeue_command, "--noheader", "--states=all", f"--name={job_name}", "--format=%F|%j"
        )
        try:
            rc, out, _ = await self._run(argv, self.command_timeout)
        except BackendUnavailable:
            return None
        ids = {
            line.split("|", 1)[0].strip()
            for line in out.splitlines()
            if line.strip() and line.split("|", 1)[-1].strip() == job_name
        }
        if rc != 0 or len(ids) != 1:
            return None
        found = ids.pop()
        return found if found.isdigit() else None

    def _job_name(self, spec: LaunchSpec, job_id: str | None = None) -> str:
        return self.job_name_template.format(
            agent=spec.agent, job_id=job_id or spec.job_id, user=spec.user, name=spec.name or job_id or spec.job_id
        )

    def _remember(self, backend_id: str, spec: LaunchSpec) -> None:
        self._submitted_at[backend_id] = time.monotonic()
        self._job_dirs[backend_id] = Path(spec.job_dir)
        if spec.after_ok:
            self._after_ok[backend_id] = list(spec.after_ok)

    async def adopt(self, backend_id: str, spec: LaunchSpec) -> None:
        """Re-attach to a job submitted before a restart: only what poll() reads locally."""
        self._job_dirs[backend_id] = Path(spec.job_dir)
        if spec.after_ok:
            self._after_ok[backend_id] = list(spec.after_ok)

    async def submit(self, spec: LaunchSpec) -> str:
        job_dir = Path(spec.job_dir)
        script = job_dir / "slurm.sbatch"
        script.write_text(self.render_script(spec), encoding="utf-8")
        backend_id = await self._sbatch(script, self._job_name(spec), "{job_id}" in self.job_name_template)
        self._remember(backend_id, spec)
        self.log.info("Slurm job %s submitted for %s", backend_id, spec.job_id)
        return backend_id

    def render_array_script(self, specs: list[LaunchSpec], array_dir: Path, indices: str) -> str:
        """One batch script for many jobs: element i runs ``specs[i]`` in its own job dir.

        ``--output`` goes through ``<array_dir>/<i>``, a symlink to element i's job
        directory, so each element's log (Slurm's own messages included) lands in
        its ``stdout.log``.
        """
        first = specs[0]
        runtimes = [s.max_runtime_seconds for s in specs]
        seconds = None if any(r is None for r in runtimes) else max(runtimes)  # type: ignore[type-var]
        after = sorted({p for s in specs for p in s.after_ok})
        base = LaunchSpec(**{**first.__dict__, "after_ok": after, "job_id": first.job_id})
        d = self._directives(base, gpu_count=first.gpu_count, seconds=seconds)
        d["job-name"] = self._job_name(first, f"array-{array_dir.name}")
        d["array"] = indices
        d["output"] = str(array_dir / "%a" / "stdout.log")
        d["open-mode"] = "append"
        lines = self._header(d)
        lines.append('case "${SLURM_ARRAY_TASK_ID:-}" in')
        for i, spec in enumerate(specs):
            job_dir = shlex.quote(str(Path(spec.job_dir).resolve()))
            lines.append(f"  {i})")
            lines.append(f"    JOB_DIR={job_dir}")
            lines += [f"    {line}" for line in self._job_env_lines(spec)]
            lines.append("    ;;")
        lines.append('  *) echo "no job for array index ${SLURM_ARRAY_TASK_ID:-?}" >&2; exit 2 ;;')
        lines.append("esac")
        lines.append('cd "$JOB_DIR" || exit 2')
        lines += list(self.script_preamble)
        lines.append(self._exec_line('"$JOB_DIR"'))
        return "\n".join(lines) + "\n"

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
                await self._scancel_quietly(arrays)
            raise
        return [i for i in ids if i is not None]

    async def _submit_one_array(self, specs: list[LaunchSpec], parallel_limit: int | None) -> list[str]:
        array_dir = Path(specs[0].job_dir).resolve().parent / ".slurm-arrays" / uuid.uuid4().hex[:12]
        array_dir.mkdir(parents=True, exist_ok=False)
        for i, spec in enumerate(specs):
            (array_dir / str(i)).symlink_to(Path(spec.job_dir).resolve(), target_is_directory=True)
        indices = f"0-{len(specs) - 1}"
        if parallel_limit:
            indices += f"%{int(parallel_limit)}"
        script = array_dir / "array.sbatch"
        script.write_text(self.render_array_script(specs, array_dir, indices), encoding="utf-8")
        array_id = await self._sbatch(
            script, self._job_name(specs[0], f"array-{array_dir.name}"), "{job_id}" in self.job_name_template
        )
        ids = [f"{array_id}_{i}" for i in range(len(specs))]
        for bid, spec in zip(ids, specs):
            self._remember(bid, spec)
            # the job dir says where its batch script is, for whoever debugs it
            try:
                (Path(spec.job_dir) / "slurm.sbatch").write_text(
                    f"# element {bid.split('_')[1]} of Slurm array {array_id}: see {script}\n",
                    encoding="utf-8",
                )
            except OSError:
                pass
        self.log.info("Slurm array %s submitted: %d jobs, limit %s", array_id, len(specs), parallel_limit)
        return ids

    # ------------------------------------------------------------------ polling

    async def _queue_snapshot(self) -> QueueSnapshot:
        async with self._snapshot_lock:
            now = time.monotonic()
            snap = self._snapshot
            if snap is not None and now - snap.taken_at < self.min_poll_interval:
                return snap
            if now < self._backoff_until:
                raise BackendUnavailable(
                    f"Slurm unreachable ({self._last_error}); next try in {self._backoff_until - now:.0f}s"
                )
            argv = self._argv(self.squeue_command, "--json", *self.squeue_args)
            taken_at = time.monotonic()
            try:
                rc, out, err = await self._run(argv, self.command_timeout)
                if rc != 0:
                    self._fail(argv, rc, out, err)
                try:
                    entries = parse_squeue_json(out)
                except SqueueError as exc:
                    raise BackendUnavailable(f"squeue: {exc}") from exc
                except ValueError as exc:
                    raise BackendUnavailable(f"squeue answered no JSON: {exc}: {err.strip()[:200]}") from exc
            except (BackendUnavailable, SlurmCommandError) as exc:
                self._backoff = min(
                    self.poll_backoff_max, self._backoff * 2 if self._backoff else self.poll_backoff_initial
                )
                self._backoff_until = time.monotonic() + self._backoff
                self._last_error = str(exc)
                if isinstance(exc, BackendUnavailable):
                    raise
                raise BackendUnavailable(str(exc)) from exc
            self._backoff = 0.0
            self._backoff_until = 0.0
            self._last_error = ""
            self._snapshot = QueueSnapshot(entries, taken_at)
            return self._snapshot

    async def _sacct(self, ids: list[str]) -> dict[str, dict[str, str]] | None:
        """Rows for ids from accounting; None when accounting cannot answer now.

        Without slurmdbd (``sacct``: "accounting storage is disabled") it falls back to
        the job completion log (``sacct -c``, ``JobCompType=jobcomp/filetxt``), which
        knows plain jobs by id but not array elements; without either, ``{}``.
        """
        rows: dict[str, dict[str, str]] = {}
        if self._accounting == "none":
            return rows
        if self._accounting == "jobcomp":
            ids = [i for i in ids if "_" not in i]  # the completion log has no array ids
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            extra = ["--completion"] if self._accounting == "jobcomp" else ["--allocations"]
            argv = self._argv(
                self.sacct_command,
                "--parsable2",
                "--noheader",
                *extra,
                f"--format={','.join(SACCT_FIELDS)}",
                f"--jobs={','.join(chunk)}",
            )
            try:
                rc, out, err = await self._run(argv, self.command_timeout)
            except BackendUnavailable as exc:
                self.log.warning("sacct unavailable: %s", exc)
                return None
            if rc != 0:
                low = err.lower()
                if any(p in low for p in _NO_ACCOUNTING_PATTERNS) or self._accounting == "jobcomp":
                    if self._accounting == "sacct" and self.sacct_completion_fallback:
                        self.log.warning("no Slurm accounting (%s): using sacct -c", err.strip())
                        self._accounting = "jobcomp"
                        return await self._sacct(ids)
                    self.log.warning("no Slurm accounting: %s", err.strip())
                    self._accounting = "none"
                    return {}  # nothing will ever be found there
                self.log.warning("sacct failed (exit %s): %s", rc, err.strip()[:300])
                return None
            rows.update(parse_sacct(out))
        return rows

    def _from_queue(self, backend_id: str, e: QueueEntry) -> BackendJobState:
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
        restarts = _num(e.raw.get("restart_cnt"))
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
        self._decorate(backend_id, state)
        return state

    def _from_sacct(self, backend_id: str, row: dict[str, str]) -> BackendJobState:
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
        self._decorate(backend_id, state)
        return state

    def _decorate(self, backend_id: str, state: BackendJobState) -> None:
        """What the orchestrator needs beyond the state: parents, OOM seen in the log."""
        if backend_id in self._after_ok:
            state.detail["after_ok"] = list(self._after_ok[backend_id])
        if state.reason == "dependency_failed":
            state.detail.setdefault("slurm_reason", _DEPENDENCY_NEVER)
            state.detail["message"] = "a parent job did not complete successfully; this job never ran"
        if backend_id in self._cancel_requested and state.status == "CANCELLED":
            state.detail["cancel_requested"] = True
        if state.status == "FAILED" and state.reason not in ("timeout", "out_of_memory"):
            # Without cgroups Slurm's OverMemoryKill ends a job FAILED (signal 9), not
            # OUT_OF_MEMORY; slurmstepd says why in the job's output.
            if self._log_says_oom(backend_id):
                state.detail["slurm_reason_reported"] = state.reason
                state.reason = "out_of_memory"

    def _log_says_oom(self, backend_id: str) -> bool:
        job_dir = self._job_dirs.get(backend_id)
        if job_dir is None:
            return False
        try:
            with open(job_dir / "stdout.log", "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                tail = fh.read().decode(errors="replace").lower()
        except OSError:
            return False
        return any(m in tail for m in _OOM_MARKERS)

    async def poll(self, backend_ids: list[str]) -> dict[str, BackendJobState]:
        """States of many jobs: one squeue call (at most one per min_poll_interval), one sacct
        call for those that left the queue or just ended; terminal states come from a cache.

        Raises :class:`BackendUnavailable` while the controller cannot be reached: the
        caller keeps the states it has (nothing is reported lost during an outage).
        """
        result: dict[str, BackendJobState] = {}
        active: list[str] = []
        for bid in dict.fromkeys(backend_ids):
            cached = self._terminal.get(bid)
            if cached is not None:
                result[bid] = cached
            else:
                active.append(bid)
        if not active:
            return result
        snap = await self._queue_snapshot()
        to_sacct: list[str] = []
        from_queue: dict[str, BackendJobState] = {}
        unsatisfiable: list[str] = []
        for bid in active:
            e = snap.lookup(bid)
            if e is None:
                if self._submitted_at.get(bid, -1.0) >= snap.taken_at:
                    # submitted after the snapshot was taken: it is queued, we just did not look yet
                    result[bid] = BackendJobState(status="QUEUING", detail={"source": "submitted"})
                else:
                    to_sacct.append(bid)
                continue
            state = self._from_queue(bid, e)
            if state.status in TERMINAL:
                if state.reason == "dependency_failed" and e.states[:1] == ["PENDING"]:
                    unsatisfiable.append(bid)
                    self._finish(bid, state, result)
                else:
                    # ended: accounting knows the exit code and who cancelled it
                    from_queue[bid] = state
                    to_sacct.append(bid)
            else:
                self._missing_since.pop(bid, None)
                self._last[bid] = state
                result[bid] = state
        if unsatisfiable and self.cancel_unsatisfiable:
            await self._scancel_quietly(unsatisfiable)
        if to_sacct:
            rows = await self._sacct(to_sacct)
            now = time.monotonic()
            for bid in to_sacct:
                row = sacct_lookup(rows, bid) if rows else None
                queued = from_queue.get(bid)
                if queued is None and bid in self._awaiting_accounting:
                    queued = self._awaiting_accounting[bid][1]  # it has left the queue since
                if row is not None:
                    state = self._from_sacct(bid, row)
                    if queued is not None and state.status not in TERMINAL:
                        state = queued  # accounting has not caught up with the controller yet
                    elif queued is not None:
                        # accounting may lag on some fields: keep what the queue said
                        if queued.reason == "dependency_failed" and state.status == "CANCELLED":
                            state.reason = "dependency_failed"
                            state.detail["slurm_reason"] = queued.detail.get("slurm_reason")
                            self._decorate(bid, state)
                        for key, value in queued.detail.items():
                            if key in ("user", "partition", "nodes", "dependency"):
                                state.detail[key] = value
                    if state.status in TERMINAL:
                        self._finish(bid, state, result)
                    else:
                        self._last[bid] = state
                        self._missing_since.pop(bid, None)
                        result[bid] = state
                elif queued is not None:
                    since, _ = self._awaiting_accounting.setdefault(bid, (now, queued))
                    if (queued.status == "CANCELLED" and self._accounting == "sacct"
                            and now - since < self.accounting_grace_seconds):  # fmt: skip
                        # slurmdbd has not recorded it yet; only it knows who cancelled
                        result[bid] = self._last.get(bid) or BackendJobState(
                            status="QUEUING", detail={"source": "unconfirmed"}
                        )
                    else:
                        self._finish(bid, queued, result)
                elif rows is None:
                    # accounting unreachable: say what we last knew, declare nothing lost
                    result[bid] = self._last.get(bid) or BackendJobState(
                        status="QUEUING", detail={"source": "unconfirmed"}
                    )
                elif bid in self._cancelled_pending:
                    # A pending array element that is cancelled vanishes without a trace
                    # (no squeue entry, no accounting record): we asked, it is gone.
                    gone = BackendJobState(
                        status="CANCELLED",
                        reason="cancelled",
                        detail={"cancel_requested": True, "source": "absence",
                                "message": "cancelled before it started; Slurm kept no record"},
                    )  # fmt: skip
                    self._finish(bid, gone, result)
                else:
                    since = self._missing_since.setdefault(bid, now)
                    if now - since >= self.lost_grace_seconds:
                        lost = BackendJobState(
                            status="FAILED",
                            reason="lost",
                            detail={
                                "message": "the job is in neither squeue nor sacct",
                                "last_known": self._last[bid].status if bid in self._last else None,
                            },
                        )
                        self._finish(bid, lost, result)
                    else:
                        # still within the grace: what we last knew, never "unknown" (which
                        # a caller may take for lost)
                        result[bid] = self._last.get(bid) or BackendJobState(
                            status="QUEUING", detail={"source": "unconfirmed"}
                        )
        return result

    def _finish(self, bid: str, state: BackendJobState, result: dict[str, BackendJobState]) -> None:
        self._terminal[bid] = state
        while len(self._terminal) > max(1, self.terminal_cache_size):
            self._terminal.pop(next(iter(self._terminal)))  # the oldest: its caller stored it long ago
        result[bid] = state
        for table in (self._last, self._missing_since, self._submitted_at, self._job_dirs,
                      self._after_ok, self._cancel_requested, self._awaiting_accounting):  # fmt: skip
            table.pop(bid, None)
        self._cancelled_pending.discard(bid)

    def forget(self, backend_ids: Iterable[str]) -> None:
        """Drop cached terminal states the caller has stored (memory stays bounded)."""
        for bid in backend_ids:
            self._terminal.pop(bid, None)
            self._job_dirs.pop(bid, None)
            self._after_ok.pop(bid, None)
            self._cancel_requested.pop(bid, None)
            self._awaiting_accounting.pop(bid, None)
            self._cancelled_pending.discard(bid)

    # ------------------------------------------------------------------ cancel

    async def cancel(self, backend_id: str) -> None:
        """``scancel``; the next poll confirms (CANCELLED, detail ``cancelled_by``).

        Raises :class:`SlurmPermissionError` when Slurm refuses (another user's job),
        :class:`BackendUnavailable` when the controller is down.
        """
        if backend_id in self._terminal:
            return
        # Was it pending? A pending array element that is cancelled leaves no trace at all,
        # and its absence must then read as "cancelled", not as "lost".
        try:
            entry = (await self._queue_snapshot()).lookup(backend_id)
        except BackendUnavailable:
            entry = None
        argv = self._argv(self.scancel_command, backend_id)
        rc, out, err = await self._run(argv, self.command_timeout)
        # scancel exits 0 for an unknown id but prints errors for refused ones with some versions
        if rc != 0 or "error" in err.lower():
            low = err.lower()
            if "invalid job id" in low or "already completing or completed" in low:
                return  # gone already: the next poll reports how it ended
            self._fail(argv, rc or 1, out, err)
        self._cancel_requested[backend_id] = time.monotonic()
        if entry is not None and map_slurm_state(entry.states, entry.reason)[0] == "QUEUING":
            self._cancelled_pending.add(backend_id)

    async def _scancel_quietly(self, ids: list[str]) -> None:
        try:
            rc, out, err = await self._run(self._argv(self.scancel_command, *ids), self.command_timeout)
            if rc != 0:
                self.log.warning("scancel of jobs whose dependency failed: %s", err.strip())
        except BackendUnavailable as exc:
            self.log.warning("scancel of jobs whose dependency failed: %s", exc)

    # ------------------------------------------------------------------ resources / health

    async def resources(self) -> list[GpuPool]:
        """GPU pools from ``sinfo``: one per (partition, GPU type)."""
        fmt = "NodeHost:0|,Partition:0|,Gres:0|,GresUsed:0|,StateLong:0|"
        argv = self._argv(self.sinfo_command, "--Node", "--noheader", f"--Format={fmt}")
        rc, out, err = await self._run(argv, self.command_timeout)
        if rc != 0:
            self._fail(argv, rc, out, err)
        gres_name = self.gres_type.split(":", 1)[0]
        wanted_type = self.gres_type.split(":", 1)[1] if ":" in self.gres_type else None
        pools: dict[tuple[str, str], dict[str, Any]] = {}
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) < 5:
                continue
            node, partition, gres, used, state = parts[:5]
            is_default = partition.endswith("*")
            partition = partition.rstrip("*")
            total = parse_gres(gres, gres_name)
            in_use = parse_gres(used, gres_name)
            usable = _node_usable(state)
            for typ, count in total.items():
                if wanted_type and typ != wanted_type:
                    continue
                p = pools.setdefault(
                    (partition, typ),
                    {"total": 0, "free": 0, "nodes": 0, "down": 0, "default": is_default},
                )
                p["total"] += count
                p["nodes"] += 1
                if usable:
                    busy = in_use.get(typ, 0) if typ in in_use else sum(in_use.values())
                    p["free"] += max(0, count - busy)
                else:
                    p["down"] += count
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
        argv = self._argv(self.sinfo_command, "--noheader", "--format=%P %a %D %T")
        try:
            rc, out, err = await self._run(argv, self.command_timeout)
        except BackendUnavailable as exc:
            return {"ok": False, "backend": self.name, "reason": str(exc)}
        if rc != 0:
            return {"ok": False, "backend": self.name, "reason": (err or out).strip()[:500]}
        partitions = sorted({line.split()[0].rstrip("*") for line in out.splitlines() if line.split()})
        info: dict[str, Any] = {"ok": True, "backend": self.name, "partitions": partitions}
        if self.partition and self.partition not in partitions:
            info.update(ok=False, reason=f"partition {self.partition!r} not offered by sinfo")
        if self._last_error:
            info["last_poll_error"] = self._last_error
        info["accounting"] = self._accounting  # sacct, jobcomp (sacct -c), none; known after a lookup
        return info


_SLURM_COMMANDS = {"sbatch", "squeue", "sacct", "scancel", "sinfo", "scontrol"}


def _failed_reason(exit_code: int | None, slurm_reason: str) -> str:
    """Plain FAILED: ``exit_code`` (as the local backend says) for a non-zero exit, else
    Slurm's reason (``JobLaunchFailure``, ``RaisedSignal:9(Killed)``...)."""
    if exit_code is not None and exit_code > 0:
        return "exit_code"
    if slurm_reason and slurm_reason not in ("None", "NonZeroExitCode"):
        return slurm_reason
    return "signal" if exit_code is not None and exit_code < 0 else "failed"


def _valid_env_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name))


def _user_name(uid: str) -> str:
    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, ValueError):
        return uid
