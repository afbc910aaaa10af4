"""JobProgress: one job's live status, progress bar, metrics and a cancel button.

It is what a :class:`~cosmic_horizons_lab.notebook.jobs.Job` displays as. It keeps
no record of its own: the ``Job`` is the kernel's one copy of the job (each
event applied to it once); the panel listens to it and renders ``job.record``
when the update pump flushes. When an image job completes, a quick-look
picture (RA/Dec axes, sources circled) appears in the panel.

The panel also draws a small live chart of the job's own resource samples (its GPUs'
utilisation and memory, or its CPU and RSS: ``GET jobs/{id}/resources``). The kernel polls
that endpoint with its ``after`` cursor every ``RESOURCE_POLL`` seconds while the job runs
(once more when it ends, for the final sample) and sends the series to the view as binary
buffers; samples are not events, so they do not load the event stream.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets

from cosmic_horizons_lab.notebook.widgets.live import LiveWidget
from cosmic_horizons_lab.notebook.widgets.static import CSS, view
from cosmic_horizons_lab.notebook.widgets.summary import job_line

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.jobs import Job

#: The fields of a job record the view shows (a record's params and result stay in the kernel).
FIELDS = (
    "id", "agent", "dataset_id", "status", "progress", "metrics", "error", "priority",
    "created_at", "started_at", "completed_at", "output_url", "batch_id",
)


#: Seconds between polls of the job's resource samples, and the most points the chart keeps.
RESOURCE_POLL = 2.0
MAX_POINTS = 600


def view_record(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in FIELDS if k in record}


def resource_series(samples: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(times, utilisation %, memory bytes, memory total bytes) per sample time: a job's GPUs
    read at one time are one point (mean utilisation, summed memory); the CPU is one already."""
    points: dict[str, list[float]] = {}
    for s in samples:
        p = points.setdefault(s["ts"], [0.0, 0.0, 0.0, 0.0])
        p[0] += 1
        p[1] += float(s.get("utilization") or 0.0)
        p[2] += float(s.get("memory_bytes") or 0.0)
        p[3] += float(s.get("memory_total_bytes") or 0.0)
    order = sorted(points, key=lambda ts: datetime.fromisoformat(ts.replace("Z", "+00:00")))
    times = np.array([datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() for ts in order])
    util = np.array([points[ts][1] / points[ts][0] for ts in order], dtype=np.float32)
    mem = np.array([points[ts][2] for ts in order], dtype=np.float64)
    total = np.array([points[ts][3] for ts in order], dtype=np.float64)
    return times, util, mem, total


class JobProgress(LiveWidget):
    _esm = view("progress")
    _css = CSS

    job = traitlets.Dict(help="The job's record as the view shows it (status, progress 0..1, metrics).").tag(sync=True)
    preview = traitlets.Bytes(b"", help="A PNG quick-look of the job's image output, once it completed.").tag(sync=True)
    preview_alt = traitlets.Unicode("").tag(sync=True)
    preview_error = traitlets.Unicode("", help="Why a completed image job shows no picture, in one line.").tag(sync=True)
    res_kind = traitlets.Unicode("", help="What the job sampled: 'gpu', 'cpu', or '' before its first sample.").tag(sync=True)
    res_host = traitlets.Unicode("", help="The node(s) the samples came from.").tag(sync=True)
    res_times = traitlets.Bytes(b"", help="Sample times, float64 seconds since the epoch.").tag(sync=True)
    res_util = traitlets.Bytes(b"", help="Utilisation %, float32 (GPU mean, or CPU % of one core).").tag(sync=True)
    res_mem = traitlets.Bytes(b"", help="Memory used in bytes, float64 (GPU memory summed, or RSS).").tag(sync=True)
    res_mem_total = traitlets.Bytes(b"", help="Memory total in bytes, float64 (0 when unknown).").tag(sync=True)

    def __init__(self, job: "Job", *, preview: bool = True, resources: bool = True, **kwargs: Any) -> None:
        self._job = job
        self._want_preview = preview
        self._preview_lock = threading.Lock()
        self._previewed = False
        super().__init__(pump=job.lab.pump, job=view_record(job.record), **kwargs)
        job.add_listener(self._on_job_change)
        # The event stream is open before the snapshot is read: no change falls between.
        job.watch()
        self._on_job_change(job)  # anything that changed since the first render, and a finished job's picture
        threading.Thread(target=self._load, daemon=True).start()
        self._samples: list[dict[str, Any]] = []
        self._resources_stop = threading.Event()
        if resources:
            threading.Thread(target=self._poll_resources, name="cosmic-horizons-resources", daemon=True).start()

    def __repr__(self) -> str:
        return f"<JobProgress of {self._job!r}>"

    def summary(self) -> list[str]:
        """The job's title line, then its error or the reason it has no quick-look."""
        record = self._job.record
        lines = [job_line(record)]
        if record.get("error"):
            lines.append(f"error: {str(record['error']).splitlines()[0][:300]}")
        if self.preview_error:
            lines.append(self.preview_error)
        return lines

    @property
    def job_id(self) -> str:
        return self._job.id

    def _load(self) -> None:
        try:
            self._job.refresh()
        except Exception as exc:
            self.report_error(exc)

    def _on_job_change(self, job: "Job") -> None:
        self.invalidate()
        if job.status == "COMPLETED" and self._want_preview:
            with self._preview_lock:
                start, self._previewed = not self._previewed, True
            if start:
                threading.Thread(target=self._make_preview, daemon=True).start()

    def render(self) -> dict[str, Any]:
        return {"job": view_record(self._job.record)}

    def _make_preview(self) -> None:
        try:
            png = self._job.quicklook_png()
        except FileNotFoundError:
            return  # a job without an image has no picture to draw, and nothing to explain
        except Exception as exc:
            self.stage(preview_error=f"no quick-look: {type(exc).__name__}: {exc}".splitlines()[0][:300])
            return
        if png:
            self.stage(preview=png, preview_alt=f"quick-look of job {self.job_id}")

    def _poll_resources(self) -> None:
        """Follow ``jobs/{id}/resources`` from its cursor until the job has ended and been read once more."""
        after, last_round = 0, False
        while not self._resources_stop.is_set():
            ended = self._job.done
            try:
                while True:
                    body = self._job.lab.client.request(
                        "GET", f"jobs/{self.job_id}/resources", params={"after": after, "limit": 2000})
                    got = body.get("samples") or []
                    after = int(body.get("next_after", after))
                    self._samples.extend(got)
                    if len(got) < 2000:
                        break
            except Exception as exc:
                self.report_error(exc)
            else:
                self._stage_series()
            if last_round:
                return
            last_round = ended
            self._resources_stop.wait(RESOURCE_POLL if not ended else 0.5)

    def _stage_series(self) -> None:
        if not self._samples:
            return
        kind = "gpu" if any(s.get("kind") == "gpu" for s in self._samples) else "cpu"
        chosen = [s for s in self._samples if s.get("kind") == kind]  # the GPUs when it has any
        times, util, mem, total = (a[-MAX_POINTS:] for a in resource_series(chosen))
        if len(self._samples) > 8 * MAX_POINTS:
            cut = times[0] if len(times) else 0.0
            self._samples = [s for s in chosen
                             if datetime.fromisoformat(s["ts"].replace("Z", "+00:00")).timestamp() >= cut]
        self.stage(
            res_kind=kind,
            res_host=", ".join(sorted({s.get("host") or "" for s in chosen[-64:]})),
            res_times=times.astype(np.float64).tobytes(), res_util=util.astype(np.float32).tobytes(),
            res_mem=mem.astype(np.float64).tobytes(), res_mem_total=total.astype(np.float64).tobytes(),
        )

    def close(self) -> None:
        self._resources_stop.set()
        super().close()

    def action_cancel(self, _content: dict[str, Any]) -> None:
        if not self._job.done:
            self._job.cancel(check=True)
