"""The job directory: ``<work_dir>/<user>/<job id>/`` with job.json, events.jsonl, resources.jsonl,
stdout.log, outputs/.

It is the only thing the server and a running job share, so it is also how
a new server finds out what happened while it was down.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.protocol.checksums import sha256_file

#: The files of a job directory, and the variable through which a job process finds its own.
JOB_DIR_ENV = "COSMIC_HORIZONS_JOB_DIR"
JOB_FILE = "job.json"  # what to run: written by the server before launch
EVENTS_FILE = "events.jsonl"  # what happened: appended by the job, one JSON object a line
LOG_FILE = "stdout.log"  # the job's stdout and stderr
OUTPUTS_DIR = "outputs"  # the job's results
EXIT_FILE = "exit_code"  # written by the launcher when the job process ends
#: The job's resource samples, appended by the executor's sampler (``executor/sampler.py``), one
#: JSON object a line per GPU (or the CPU) per sample; the server ingests them into job_samples.
RESOURCES_FILE = "resources.jsonl"
#: ``<launch token> <backend id>``: written atomically by the job's starter as its very first act
#: (the local starter: its pid; a Slurm batch script: its job id), so a restarted server that
#: committed the launch's intent (the token) finds what that launch started instead of starting
#: the job again.
LAUNCH_TOKEN_FILE = "launch_token"
#: The job's finished spans, one JSON object a line, appended by the job process
#: (``executor/tracing.py``) and read by the server when the job ends (``server/tracing.py``):
#: ``{"name", "trace_id", "span_id", "parent_span_id", "start_ns", "end_ns", "attributes",
#: "status": "ok"|"error", "error"?}``, times in ns since the Unix epoch.
SPANS_FILE = "spans.jsonl"
#: The key of ``job.json`` holding the W3C ``traceparent`` of the job's submission (absent when
#: the submission carried no trace): the job's spans are its children.
TRACEPARENT_KEY = "traceparent"

_MAX_TAIL = 4 * 1024 * 1024


def job_dir(work_dir: Path, user: str, job_id: str) -> Path:
    # User names come from the identity provider; keep them one safe path segment.
    safe_user = "".join(c if c.isalnum() or c in "-_." else "_" for c in user).lstrip(".") or "_"
    return Path(work_dir) / safe_user / job_id


def read_launch_token(path: Path) -> tuple[str, str] | None:
    """(token, backend id) of the launch that started in this job directory, or None if none did."""
    try:
        text = (path / LAUNCH_TOKEN_FILE).read_text(encoding="utf-8").split()
    except OSError:
        return None
    if len(text) < 2:
        return None
    return text[0], text[1]


def write_job_file(path: Path, data: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (JOB_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path / JOB_FILE)


def read_records(path: Path, offset: int, name: str = EVENTS_FILE) -> tuple[list[dict[str, Any]], int]:
    """Complete records appended to events.jsonl (or the JSON-lines file ``name``) since
    ``offset``, and the new offset.

    A line still being written (no newline yet) is left for the next read, so
    every record is turned into an event exactly once.
    """
    try:
        with open(path / name, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read(_MAX_TAIL)
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    records = []
    for line in chunk[: end + 1].splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a corrupt line is skipped, not fatal to the job's bookkeeping
        if isinstance(rec, dict):
            records.append(rec)
    return records, offset + end + 1


def read_log(path: Path, offset: int, limit: int) -> dict[str, Any]:
    """A slice of stdout.log from ``offset``; ``size`` tells a tailing client where the end is."""
    log = path / LOG_FILE
    try:
        size = log.stat().st_size
        with open(log, "rb") as fh:
            fh.seek(offset)
            data = fh.read(limit)
    except FileNotFoundError:
        size, data = 0, b""
    return {
        "offset": offset,
        "next_offset": offset + len(data),
        "size": size,
        "data": data.decode("utf-8", errors="replace"),
    }


class OutputIndex:
    """Output files with their SHA-256, hashed once per (size, mtime)."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[str, int, int], str] = {}

    def list(self, path: Path) -> list[dict[str, Any]]:
        out = path / OUTPUTS_DIR
        if not out.is_dir():
            return []
        items = []
        for file in sorted(p for p in out.rglob("*") if p.is_file() and not p.is_symlink()):
            st = file.stat()
            key = (str(file), st.st_size, st.st_mtime_ns)
            digest = self._hashes.get(key)
            if digest is None:
                digest = sha256_file(file)
                self._hashes[key] = digest
            items.append({"path": file.relative_to(out).as_posix(), "size_bytes": st.st_size, "sha256": digest})
        return items


def output_file(path: Path, relative: str) -> Path | None:
    """The output file ``relative`` names, or None if it is not one (or leaves outputs/)."""
    root = (path / OUTPUTS_DIR).resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target
