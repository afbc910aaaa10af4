"""GPU telemetry: one NVML sampler per server, fanned out to every viewer.

NVML is initialised lazily on the sampler's thread (never at import), and a
machine without NVML says so and carries on: ``available`` is False with the
reason. Samples live in a ring buffer for the heatmap and are persisted to
``gpu_samples`` so utilisation during a job can be measured after the fact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from cosmic_horizons_lab.protocol.clock import isoformat, utcnow

log = logging.getLogger(__name__)

MIN_INTERVAL, MAX_INTERVAL = 0.25, 60.0


def _load_nvml() -> Any:
    import pynvml  # nvidia-ml-py

    return pynvml


def probe_gpus(nvml: Any = None) -> tuple[list[dict[str, Any]], str | None]:
    """The GPUs NVML sees now, or ([], why not). Blocking: call it from a thread."""
    try:
        nvml = nvml or _load_nvml()
        nvml.nvmlInit()
    except Exception as exc:  # no driver, no library, no device: all mean "no GPU here"
        return [], f"NVML unavailable: {exc}"
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
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


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

    @property
    def available(self) -> bool:
        return bool(self.gpus)

    async def start(self) -> None:
        self.gpus, self.reason = await asyncio.to_thread(probe_gpus, self.nvml)
        if self.gpus:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        from cosmic_horizons_lab.server.store.orm import GpuSample

        while True:
            started = time.monotonic()
            gpus, reason = await asyncio.to_thread(probe_gpus, self.nvml)
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

    def inventory(self) -> dict[str, Any]:
        return {"available": self.available, "reason": self.reason, "gpus": self.gpus}

    def history(self, seconds: float) -> dict[str, Any]:
        n = max(1, int(seconds / self.interval))
        return {
            "available": self.available,
            "reason": self.reason,
            "interval_seconds": self.interval,
            "gpus": [{"index": g["index"], "name": g["name"], "memory_total_mb": g["memory_total_mb"]} for g in self.gpus],
            "samples": list(self.samples)[-n:],
        }
