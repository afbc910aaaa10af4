"""Resource samples taken inside the job: its own GPUs through NVML, or else its CPU and RSS.

The server's sampler watches the server's host, which on a cluster is the login node; the
GPUs a job really uses are on its compute node, and only the job can see them. So the job
samples itself on a daemon thread and appends one JSON line per GPU (or one for the CPU) per
tick to ``resources.jsonl`` in its job directory (:data:`~cosmic_horizons_lab.protocol.jobdir.
RESOURCES_FILE`), which the server ingests like ``events.jsonl``: it needs no network.

Which GPUs are the job's: those ``CUDA_VISIBLE_DEVICES`` names (UUIDs, as Slurm may set, or
NVML indices, as the local backend sets). An empty ``CUDA_VISIBLE_DEVICES``, a machine
without NVML, or a job whose GPUs NVML cannot find means the CPU is sampled instead: the
utilisation of the job's whole process tree in percent of one core (as ``top`` counts it),
and the tree's resident memory.

NVML is initialised once when the sampler starts and shut down when it stops; importing this
module touches nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.protocol.jobdir import RESOURCES_FILE

log = logging.getLogger(__name__)

#: The sampling interval's bounds in seconds: faster burns the job's own CPU, slower says little.
MIN_INTERVAL, MAX_INTERVAL = 0.1, 60.0
DEFAULT_INTERVAL = 1.0
_FROM_ENVIRONMENT = object()


def clamp_interval(seconds: Any) -> float:
    """The interval job.json asks for, within the bounds (the default when it names none)."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return DEFAULT_INTERVAL
    if not math.isfinite(value):
        return DEFAULT_INTERVAL if math.isnan(value) else MAX_INTERVAL
    return min(max(value, MIN_INTERVAL), MAX_INTERVAL)


def node_name() -> str:
    """The node as the scheduler names it (``SLURMD_NODENAME``), else this machine's hostname.

    A Slurm node's name need not be its hostname (several nodes may share one machine), and
    it is by Slurm's name that operators know where a job ran.
    """
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def visible_devices(value: str | None) -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES``: None when unset (every GPU), [] when empty."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _load_nvml() -> Any:
    import pynvml  # nvidia-ml-py

    return pynvml


class _Gpus:
    """The job's GPUs through one NVML session (opened by :meth:`open`, closed by :meth:`close`)."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.handles: list[tuple[int, str, Any]] = []  # (NVML index, UUID, handle)

    def open(self, wanted: list[str] | None) -> bool:
        nvml = self.nvml
        nvml.nvmlInit()
        try:
            count = int(nvml.nvmlDeviceGetCount())
            every = []
            for i in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                every.append((i, _text(nvml.nvmlDeviceGetUUID(handle)), handle))
            if wanted is None:
                self.handles = every
            else:
                for entry in wanted:
                    found = [g for g in every if (entry.isdigit() and g[0] == int(entry))
                             or (not entry.isdigit() and g[1].startswith(entry))]
                    self.handles.extend(g for g in found[:1] if g not in self.handles)
        except Exception:
            self.close()
            raise
        if not self.handles:
            self.close()
        return bool(self.handles)

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass

    def read(self) -> list[dict[str, Any]]:
        nvml = self.nvml
        rows = []
        for index, uuid, handle in self.handles:
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            rows.append({
                "kind": "gpu", "gpu_uuid": uuid, "gpu_index": index, "utilization": float(util.gpu),
                "memory_bytes": int(mem.used), "memory_total_bytes": int(mem.total),
                "power_watts": self._optional(nvml.nvmlDeviceGetPowerUsage, handle, scale=1e-3),
                "temperature_c": self._optional(
                    nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)),
            })
        return rows

    @staticmethod
    def _optional(read: Any, *args: Any, scale: float = 1.0) -> float | None:
        # Power and temperature are "not supported" on some boards (and in MIG mode): a gap, not a failure.
        try:
            return float(read(*args)) * scale
        except Exception:
            return None


class _ProcessTree:
    """CPU time and RSS of one process and all its descendants, through psutil."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.last: tuple[float, float] | None = None  # (monotonic time, CPU seconds)
        self.total_memory = int(psutil.virtual_memory().total)

    def _usage(self) -> tuple[float, int]:
        cpu, rss = 0.0, 0
        for proc in [self.root, *self._children()]:
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    # A child already reaped is in its parent's children_*; a live one only in its own.
                    cpu += t.user + t.system + t.children_user + t.children_system
                    rss += proc.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
        return cpu, rss

    def _children(self) -> list[Any]:
        try:
            return self.root.children(recursive=True)
        except self.psutil.Error:
            return []

    def read(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        cpu, rss = self._usage()
        percent = 0.0
        if self.last is not None and now > self.last[0]:
            percent = max(0.0, 100.0 * (cpu - self.last[1]) / (now - self.last[0]))
        self.last = (now, cpu)
        return [{"kind": "cpu", "gpu_uuid": None, "gpu_index": None, "utilization": round(percent, 3),
                 "memory_bytes": rss, "memory_total_bytes": self.total_memory,
                 "power_watts": None, "temperature_c": None}]


class ResourceSampler:
    """Samples the job's GPUs (or CPU) every ``interval`` seconds into ``resources.jsonl``.

    ``start()`` opens NVML once (or prepares the CPU path) and starts the thread; ``stop()``
    ends it, takes one last sample (so even a job shorter than one interval has a reading at
    its end), and shuts NVML down. ``nvml`` replaces pynvml (tests); ``visible`` replaces
    ``CUDA_VISIBLE_DEVICES``.
    """

    def __init__(
        self,
        job_dir: Path,
        interval: Any = DEFAULT_INTERVAL,
        *,
        host: str | None = None,
        nvml: Any = None,
        visible: Any = _FROM_ENVIRONMENT,
        pid: int | None = None,
    ) -> None:
        self.path = Path(job_dir) / RESOURCES_FILE
        self.interval = clamp_interval(interval)
        self.host = host or node_name()
        self._nvml = nvml
        self._visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is _FROM_ENVIRONMENT else visible
        self._pid = pid or os.getpid()
        self._source: _Gpus | _ProcessTree | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.kind: str | None = None

    def _open(self) -> None:
        wanted = visible_devices(self._visible)
        if wanted != []:
            try:
                gpus = _Gpus(self._nvml or _load_nvml())
                if gpus.open(wanted):
                    self._source, self.kind = gpus, "gpu"
                    return
            except Exception as exc:  # no library, no driver: this job has no GPU to watch
                log.debug("NVML unavailable (%s); sampling the CPU", exc)
        self._source, self.kind = _ProcessTree(self._pid), "cpu"

    def start(self) -> "ResourceSampler":
        """Open the source and start sampling; a sampler that cannot sample never fails the job."""
        try:
            self._open()
            if self.kind == "cpu":
                self._source.read()  # the baseline the first utilisation is measured from
        except Exception as exc:
            log.warning("no resource samples for this job: %s", exc)
            self._source, self.kind = None, None
            return self
        self._thread = threading.Thread(target=self._run, name="cosmic-horizons-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Take one sample and append it (a failed read is logged once per kind, never fatal)."""
        with self._lock:
            if self._source is None:
                return
            try:
                rows = self._source.read()
            except Exception as exc:
                log.warning("resource sample failed: %s", exc)
                return
            ts = datetime.now(timezone.utc).isoformat()
            text = "".join(json.dumps({"ts": ts, "host": self.host, **row}, separators=(",", ":")) + "\n"
                           for row in rows)
            try:
                # One write of whole lines: the server's tailer only ever takes complete ones.
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(text)
            except OSError as exc:
                log.warning("cannot write %s: %s", self.path, exc)

    def stop(self) -> None:
        """End the thread, take the final sample, and release NVML."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval))
        self.sample()
        with self._lock:
            if isinstance(self._source, _Gpus):
                self._source.close()
            self._source = None
