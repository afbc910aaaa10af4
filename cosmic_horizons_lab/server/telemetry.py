"""GPU telemetry: one NVML sampler per server, fanned out to every viewer.

NVML is initialised once when the sampler starts and shut down when it stops (never at import,
never per sample), and a machine without NVML says so and carries on: ``available`` is False
with the reason. Samples live in a ring buffer for the heatmap and are persisted to
``gpu_samples`` so utilisation during a job can be measured after the fact.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import Any

from cosmic_horizons_lab.protocol.clock import isoformat, utcnow
from cosmic_horizons_lab.server.background import stop_task

log = logging.getLogger(__name__)

MIN_INTERVAL, MAX_INTERVAL = 0.25, 60.0


def _load_nvml() -> Any:
    import pynvml  # nvidia-ml-py

    return pynvml


def probe_gpus(nvml: Any = None) -> tuple[list[dict[str, Any]], str | None]:
    """The GPUs NVML sees now, or ([], why not), in one NVML session of its own. Blocking."""
    try:
        nvml = nvml or _load_nvml()
        nvml.nvmlInit()
    except Exception as exc:  # no driver, no library, no device: all mean "no GPU here"
        return [], f"NVML unavailable: {exc}"
    try:
        return read_gpus(nvml)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def read_gpus(nvml: Any) -> tuple[list[dict[str, Any]], str | None]:
    """The GPUs an initialised NVML sees now, or ([], why not). Blocking: call it from a thread."""
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(h)
            uuid = nvml.nvmlDeviceGetUUID(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            gpus.append(
                {
                    "index": i,
                    "uuid": uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_total_mb": mem.total / 2**20,
                    "memory_used_mb": mem.used / 2**20,
                    "utilization": float(util.gpu),
                }
            )
        return gpus, (None if gpus else "NVML found no GPU")
    except Exception as exc:
        return [], f"NVML query failed: {exc}"


class GpuTelemetry:
    """Samples all GPUs at a clamped interval while anyone is interested."""

    def __init__(self, interval: float = 1.0, history_seconds: float = 900.0, nvml: Any = None, store: Any = None) -> None:
        self.interval = min(max(interval, MIN_INTERVAL), MAX_INTERVAL)
        self.samples: deque[dict[str, Any]] = deque(maxlen=max(1, int(history_seconds / self.interval)))
        self.nvml = nvml
        self.store = store
        self.gpus: list[dict[str, Any]] = []
        self.reason: str | None = None
        self._task: asyncio.Task | None = None
        self._session: Any = None  # the NVML module while its one session is open
        #: This host as a node of the heatmap (named as the jobs' samples name theirs)
        self.host = socket.gethostname()

    @property
    def available(self) -> bool:
        return bool(self.gpus)

    def _open(self) -> tuple[list[dict[str, Any]], str | None]:
        try:
            nvml = self.nvml or _load_nvml()
            nvml.nvmlInit()
        except Exception as exc:  # no driver, no library, no device: all mean "no GPU here"
            return [], f"NVML unavailable: {exc}"
        gpus, reason = read_gpus(nvml)
        if gpus:
            self._session = nvml
        else:
            _shutdown(nvml)
        return gpus, reason

    async def start(self) -> None:
        """Open the sampler's one NVML session and sample while the server runs (if there is a GPU)."""
        self.gpus, self.reason = await asyncio.to_thread(self._open)
        if self.gpus:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        if self._session is not None:
            session, self._session = self._session, None
            await asyncio.to_thread(_shutdown, session)

    async def _run(self) -> None:
        from cosmic_horizons_lab.server.store.orm import GpuSample

        while True:
            started = time.monotonic()
            gpus, reason = await asyncio.to_thread(read_gpus, self._session)
            if gpus:
                now = utcnow()
                self.gpus = gpus
                self.samples.append({"ts": isoformat(now), "gpus": [
                    {"index": g["index"], "utilization": g["utilization"], "memory_used_mb": g["memory_used_mb"]}
                    for g in gpus
                ]})
                if self.store is not None:
                    try:
                        async with self.store.write() as tx:
                            tx.session.add_all(
                                GpuSample(
                                    ts=now, gpu_index=g["index"], gpu_uuid=g["uuid"], utilization=g["utilization"],
                                    memory_used_mb=g["memory_used_mb"], memory_total_mb=g["memory_total_mb"],
                                )
                                for g in gpus
                            )
                    except Exception:
                        log.exception("could not persist GPU samples")
            else:
                self.reason = reason
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def inventory(self, job_nodes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The server's GPUs, and ``nodes``: this host's and every node in ``job_nodes`` (the jobs'
        own newest samples, ``JobSamples.latest_by_node``), each GPU with the job holding it."""
        return {"available": self.available, "reason": self.reason, "gpus": self.gpus,
                "nodes": self.nodes(job_nodes or [])}

    def nodes(self, job_nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """GPUs grouped per node: this host first (from this sampler, with what the jobs sampled of
        the same GPUs), then the other nodes jobs ran on."""
        by_host = {n["host"]: n for n in job_nodes}
        here = by_host.pop(self.host, None)
        held = {g["uuid"]: g for g in (here["gpus"] if here else []) if g.get("uuid")}
        ts = self.samples[-1]["ts"] if self.samples else None
        server_gpus = []
        for g in self.gpus:
            job = held.pop(g["uuid"], None) or {}
            server_gpus.append({
                "kind": "gpu", "uuid": g["uuid"], "index": g["index"], "name": g.get("name"), "ts": ts,
                "utilization": g["utilization"], "memory_bytes": int(g["memory_used_mb"] * 2**20),
                "memory_total_bytes": int(g["memory_total_mb"] * 2**20),
                "power_watts": job.get("power_watts"), "temperature_c": job.get("temperature_c"),
                "job_id": job.get("job_id"), "job_status": job.get("job_status"), "held": bool(job.get("held")),
            })
        # What jobs on this host sampled that this sampler does not see (their CPU, say) stays here too.
        others = [g for g in (here["gpus"] if here else []) if not g.get("uuid") or g["uuid"] in held]
        nodes = []
        if server_gpus or others or here is not None:
            nodes.append({"host": self.host, "source": "server" if server_gpus else "jobs",
                          "gpus": server_gpus + others})
        return nodes + [by_host[h] for h in sorted(by_host)]

    def history(self, seconds: float) -> dict[str, Any]:
        n = max(1, int(seconds / self.interval))
        return {
            "available": self.available,
            "reason": self.reason,
            "interval_seconds": self.interval,
            "gpus": [{"index": g["index"], "name": g["name"], "memory_total_mb": g["memory_total_mb"]} for g in self.gpus],
            "samples": list(self.samples)[-n:],
        }


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass
