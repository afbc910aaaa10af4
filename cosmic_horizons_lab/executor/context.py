"""What an agent sees of its job: inputs, parameters, where to write, how to report.

The executor runs on a compute node that may share nothing with the server but
the job directory, so everything an agent needs is in ``job.json`` and everything
it says goes to ``events.jsonl`` (appended, one JSON object a line, flushed at
once so the server's tailer sees progress live).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.executor.tracing import Span, SpanRecorder, StageSpans
from cosmic_horizons_lab.protocol.jobdir import (
    EVENTS_FILE,
    JOB_DIR_ENV,
    JOB_FILE,
    OUTPUTS_DIR,
    TRACEPARENT_KEY,
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def append_record(job_dir: Path, record: dict[str, Any]) -> None:
    """Append one record to the job's ``events.jsonl``.

    One ``write`` of one line on a file opened in append mode is atomic enough
    for a single writer and never leaves the server's tailer a half line it
    would then parse: the tailer only consumes complete lines.
    """
    record.setdefault("ts", _now())
    line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
    with open(job_dir / EVENTS_FILE, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()


@dataclass
class DatasetRef:
    """The dataset a job reads: its id, the path to read and its format."""

    id: str
    path: Path
    format: str

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "DatasetRef | None":
        if not data:
            return None
        return cls(id=data["id"], path=Path(data["path"]), format=data.get("format", ""))


@dataclass
class JobContext:
    """Everything an agent needs, loaded from ``job.json``.

    ``inputs`` are the output folders of the job's parents in a pipeline, in
    the order of ``depends_on``: an ImageReconstruction stage finds AlphaCal's
    calibrated visibilities there.
    """

    job_dir: Path
    job_id: str
    agent: str
    params: dict[str, Any]
    dataset: DatasetRef | None = None
    inputs: list[Path] = field(default_factory=list)
    correlation_id: str = ""
    user: str = ""
    server_root: Path | None = None
    #: The synthetic preset to generate at ``dataset.path`` if the file is missing.
    simulate: str | None = None
    #: Seconds between resource samples (``executor/sampler.py``); job.json's ``sample_interval``.
    sample_interval: float = 1.0
    #: The W3C traceparent of the job's submission (job.json's ``traceparent``); "" when untraced.
    traceparent: str = ""
    _spans: SpanRecorder | None = field(default=None, repr=False)

    @property
    def outputs(self) -> Path:
        return self.job_dir / OUTPUTS_DIR

    @classmethod
    def load(cls, job_dir: Path) -> "JobContext":
        data = json.loads((job_dir / JOB_FILE).read_text(encoding="utf-8"))
        root = data.get("server_root")
        return cls(
            job_dir=job_dir,
            job_id=data["id"],
            agent=data["agent"],
            params=data.get("params") or {},
            dataset=DatasetRef.from_json(data.get("dataset")),
            inputs=[Path(p) for p in data.get("inputs") or []],
            correlation_id=data.get("correlation_id") or "",
            user=data.get("user") or "",
            server_root=Path(root) if root else None,
            simulate=(data.get("dataset") or {}).get("simulate"),
            sample_interval=data.get("sample_interval", 1.0),
            traceparent=data.get(TRACEPARENT_KEY) or "",
        )

    @property
    def spans(self) -> SpanRecorder:
        """The job's span recorder (``spans.jsonl``): ``with job.spans.span("flag"):`` around a stage."""
        if self._spans is None:
            self._spans = SpanRecorder(self.job_dir, self.traceparent, {
                "cosmic.job_id": self.job_id, "cosmic.correlation_id": self.correlation_id,
                "cosmic.agent": self.agent})
        return self._spans

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Span | None]:
        """A stage of the job as a span of its trace (nothing when the job is untraced)."""
        return self.spans.span(name, **attributes)

    def stages(self) -> StageSpans:
        """Consecutive stages as sibling spans: ``stages.enter("flag")`` ends the one before."""
        return StageSpans(self.spans)

    def report(self, progress: float | None = None, **metrics: Any) -> None:
        """Record progress (a fraction 0..1) and metrics; the server turns them into events."""
        report(progress, _job_dir=self.job_dir, **metrics)


def report(progress: float | None = None, _job_dir: Path | None = None, **metrics: Any) -> None:
    """Report a job's progress and metrics from inside the job.

    Works from an agent or a user's Script job alike: the job directory comes
    from the environment the executor sets, so a script needs no handle.
    Outside a job (a script run by hand) it does nothing, so the same script
    runs both ways.
    """
    job_dir = _job_dir or (Path(os.environ[JOB_DIR_ENV]) if JOB_DIR_ENV in os.environ else None)
    if job_dir is None:
        return
    record: dict[str, Any] = {"type": "progress", "metrics": metrics}
    if progress is not None:
        p = float(progress)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"progress must be a fraction between 0 and 1, got {progress!r}")
        record["progress"] = p
    record["t"] = time.time()
    append_record(job_dir, record)
    stage = metrics.get("stage")
    if stage:
        # The job's log says what it is doing too: a log tail of only the agent's own prints
        # was empty for the science agents.
        done = f" ({record['progress']:.0%})" if "progress" in record else ""
        print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {stage}{done}", flush=True)
