"""What the Slurm commands print, read into plain data (no Slurm, no backend state).

Kept apart from running the commands so that the shapes of every Slurm version we
meet (21.08 to 24.x: ``squeue --json`` numbers as plain ints or as ``{"set",
"infinite", "number"}`` objects, states as a name or a list, exit codes as a wait
status or an object) can be tested on captured answers without a cluster.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable


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


# ----------------------------------------------------------------------------- squeue --json


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

    @property
    def restarts(self) -> int | None:
        """How often Slurm requeued the job (preemption, node failure, ``scontrol requeue``)."""
        return _num(self.raw.get("restart_cnt"))


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


# ----------------------------------------------------------------------------- sacct --parsable2

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
    """The row of one job; an array element still pending when it ended is only in its
    array's range row (``1234_[6-9]``)."""
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


# ----------------------------------------------------------------------------- sbatch, squeue text


def parse_sbatch_id(text: str) -> str | None:
    """The job id ``sbatch --parsable`` printed (``1234`` or ``1234;cluster``), if it did."""
    first = text.strip().splitlines()[-1] if text.strip() else ""
    job_id = first.split(";", 1)[0].strip()
    return job_id if job_id.isdigit() else None


def parse_ids_named(text: str, job_name: str) -> set[str]:
    """Job ids of ``squeue --format=%F|%j`` lines whose name is exactly ``job_name``
    (``--name`` alone would not do: some versions match it loosely)."""
    return {
        line.split("|", 1)[0].strip()
        for line in text.splitlines()
        if line.strip() and line.split("|", 1)[-1].strip() == job_name
    }


# ----------------------------------------------------------------------------- sinfo

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


#: ``sinfo --Node --Format`` that :func:`parse_sinfo_gpus` reads.
SINFO_GPU_FORMAT = "NodeHost:0|,Partition:0|,Gres:0|,GresUsed:0|,StateLong:0|"


def parse_sinfo_gpus(text: str, gres_type: str) -> dict[tuple[str, str], dict[str, Any]]:
    """GPU counts per (partition, GPU type) from one ``sinfo`` line per node and partition.

    ``gres_type`` is ``gpu`` or ``gpu:a100`` (then only that type counts). A GPU is free
    when its node takes jobs and it is not in use; a node that is down or drained
    counts its GPUs as ``down``, so that a pool can say why it has fewer free.
    """
    gres_name = gres_type.split(":", 1)[0]
    wanted_type = gres_type.split(":", 1)[1] if ":" in gres_type else None
    pools: dict[tuple[str, str], dict[str, Any]] = {}
    for line in text.splitlines():
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
    return pools


def parse_partitions(text: str) -> list[str]:
    """Partition names from ``sinfo --noheader --format=%P ...`` (the default one ends in ``*``)."""
    return sorted({line.split()[0].rstrip("*") for line in text.splitlines() if line.split()})
