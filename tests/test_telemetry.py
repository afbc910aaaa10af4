"""GPU telemetry. There is no GPU here, so the tests that exercise a GPU use a stand-in for NVML
(the one boundary that cannot run on this machine), and say so in their names."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from cosmic_horizons_lab.server.telemetry import GpuTelemetry, probe_gpus


class FakeNvmlDouble:
    """Answers like pynvml for two GPUs whose utilisation rises with each sample."""

    def __init__(self):
        self.calls = 0
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h:04d}"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=80 * 2**30, used=(h + 1) * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        self.calls += 1
        return SimpleNamespace(gpu=min(100, 10 * self.calls))


def test_without_nvml_the_server_says_no_gpu_and_carries_on():
    class Broken:
        def nvmlInit(self):
            raise OSError("NVML Shared Library Not Found")

        def nvmlShutdown(self):
            pass

    gpus, why = probe_gpus(Broken())
    assert gpus == [] and "NVML" in why


def test_probe_with_fake_nvml_double_reports_inventory():
    gpus, why = probe_gpus(FakeNvmlDouble())
    assert why is None
    assert [(g["index"], g["uuid"], g["name"]) for g in gpus] == [
        (0, "GPU-0000", "NVIDIA H100 80GB HBM3"), (1, "GPU-0001", "NVIDIA H100 80GB HBM3")]
    assert gpus[1]["memory_used_mb"] == 2048 and gpus[0]["memory_total_mb"] == 80 * 1024


async def test_one_sampler_with_fake_nvml_double_fills_history_at_a_clamped_rate():
    nvml = FakeNvmlDouble()
    telemetry = GpuTelemetry(interval=0.01, nvml=nvml)  # below the floor: clamped
    assert telemetry.interval == 0.25
    await telemetry.start()
    await asyncio.sleep(0.9)
    await telemetry.stop()
    hist = telemetry.history(seconds=60)
    assert hist["available"] and len(hist["gpus"]) == 2
    assert 2 <= len(hist["samples"]) <= 5
    first, last = hist["samples"][0]["gpus"][0]["utilization"], hist["samples"][-1]["gpus"][0]["utilization"]
    assert last > first
    assert all(s["ts"].endswith("+00:00") for s in hist["samples"])
