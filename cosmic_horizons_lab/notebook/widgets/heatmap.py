"""GpuHeatmap: the server's GPUs × time, utilisation and memory, live.

Samples come from ``gpus/history`` (the server's one NVML sampler) and travel
to the view as binary buffers (float64 times, float32 matrices), not JSON.
A server where NVML finds no GPU shows a clear "No GPU on this server" state.
Below, ``nodes`` (from ``GET gpus``) lists the GPUs per node: the server's host and every
compute node jobs sampled themselves on recently, each GPU with the job holding it.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets

from cosmic_horizons_lab.notebook.widgets.live import LiveWidget
from cosmic_horizons_lab.notebook.widgets.static import CSS, view

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.lab import Lab


def _epoch(ts: Any) -> float:
    if isinstance(ts, (int, float)):
        return float(ts)
    return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()


def history_arrays(body: dict[str, Any]) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray]:
    """``gpus/history`` as (gpus, times, utilisation %, memory %), matrices GPUs × times."""
    gpus = [
        {"index": int(g.get("index", i)), "name": g.get("name"),
         "memory_total_mb": g.get("memory_total_mb")}
        for i, g in enumerate(body.get("gpus") or [])
    ]
    rows = {g["index"]: k for k, g in enumerate(gpus)}
    samples = body.get("samples") or []
    times = np.array([_epoch(s["ts"]) for s in samples], dtype=np.float64)
    util = np.full((len(gpus), len(samples)), np.nan, dtype=np.float32)
    mem = np.full((len(gpus), len(samples)), np.nan, dtype=np.float32)
    for col, sample in enumerate(samples):
        for reading in sample.get("gpus") or [sample]:
            row = rows.get(int(reading.get("index", reading.get("gpu", 0))))
            if row is None:
                continue
            util[row, col] = reading.get("utilization", np.nan)
            total = reading.get("memory_total_mb") or gpus[row].get("memory_total_mb")
            used = reading.get("memory_used_mb")
            if used is not None and total:
                mem[row, col] = 100.0 * float(used) / float(total)
    return gpus, times, util, mem


class GpuHeatmap(LiveWidget):
    _esm = view("heatmap")
    _css = CSS

    available = traitlets.Bool(False, help="Whether NVML found a GPU on the server.").tag(sync=True)
    reason = traitlets.Unicode("", help="Why there is no GPU, as the server says.").tag(sync=True)
    gpus = traitlets.List(help="One entry per GPU: index, name, memory_total_mb.").tag(sync=True)
    times = traitlets.Bytes(b"", help="Sample times, float64 seconds since the epoch.").tag(sync=True)
    util = traitlets.Bytes(b"", help="Utilisation %, float32, GPUs × times, row-major.").tag(sync=True)
    mem = traitlets.Bytes(b"", help="Memory used % of total, float32, GPUs × times.").tag(sync=True)
    window = traitlets.Float(300.0, help="Seconds of history shown.").tag(sync=True)
    loaded = traitlets.Bool(False, help="True once the first answer came.").tag(sync=True)
    nodes = traitlets.List(help="GPUs per node, as GET gpus lists them (host, source, gpus with job_id).").tag(sync=True)

    def __init__(self, lab: "Lab", *, seconds: float = 300.0, refresh: float = 2.0, poll: bool = True) -> None:
        self._lab = lab
        self._refresh = max(0.5, refresh)
        self._stop = threading.Event()
        super().__init__(pump=lab.pump, window=float(seconds))
        if poll:
            threading.Thread(target=self._poll, name="cosmic-horizons-gpus", daemon=True).start()

    def summary(self) -> list[str]:
        """Which GPUs the map shows, or why there is none."""
        if not self.loaded:
            return ["GPU heatmap (not read yet)"]
        if not self.available:
            return [f"GPU heatmap: no GPU on this server ({self.reason})"]
        names = ", ".join(f"GPU {g.get('index')} {g.get('name', '')}".rstrip() for g in self.gpus)
        return [f"GPU heatmap: {len(self.gpus)} GPUs, last {self.window:.0f} s", names]

    def update_from(self, body: dict[str, Any]) -> None:
        gpus, times, util, mem = history_arrays(body)
        available = bool(body.get("available", bool(gpus))) and bool(gpus)
        self.stage(
            available=available,
            reason="" if available else str(body.get("reason") or "NVML found no GPU"),
            gpus=gpus,
            times=times.tobytes(),
            util=util.tobytes(),
            mem=mem.tobytes(),
            loaded=True,
        )

    def _poll(self) -> None:
        while not self._stop.is_set():
            nodes: list = []
            try:
                self.update_from(self._lab.gpu_history(self.window))
                nodes = list(self._lab.client.gpus().get("nodes") or [])
                self.stage(nodes=nodes)
            except Exception as exc:
                self.report_error(exc)
            if not self.available and self.loaded and not nodes:
                # No GPU now means none for this server's life: stop asking often.
                self._stop.wait(30.0)
            else:
                self._stop.wait(self._refresh)

    def close(self) -> None:
        self._stop.set()
        super().close()
