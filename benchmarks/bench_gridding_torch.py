"""Visibilities/s of ``dirty_image``'s torch path (the GPU's spreading) on whatever device is here.

    python benchmarks/bench_gridding_torch.py                      # cuda if present, else the CPU
    python benchmarks/bench_gridding_torch.py --sizes 1e6 --npix 1024 --repeat 3
    python benchmarks/bench_gridding_torch.py --profile            # operator counts (one call)

Random baselines as ``bench_gpu.bench_big`` makes them (uniform in a disc of 5 km in
wavelengths, w up to ±500), numpy in and numpy out, so the host→device copies are
counted; epsilon 1e-4. On the CPU ``COSMIC_HORIZONS_SPREADING=torch`` is set so the
same code runs (a proxy only: the CPU's own path is the compiled one). Each figure is
the best of ``--repeat`` timed calls after one warm-up call, with the load average.
``--profile`` prints, for one call, the number of torch operator calls and of
device synchronisations (``aten::item``/``aten::_local_scalar_dense``, and
``cudaStreamSynchronize``/``cudaMemcpy`` D→H on a card).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmic_horizons_lab.science import device as dev
from cosmic_horizons_lab.science.gridding import ImageGeometry, dirty_image


def observation(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = 5000 * np.sqrt(rng.uniform(size=n))
    th = rng.uniform(0, 2 * np.pi, n)
    uvw = np.stack([r * np.cos(th), r * np.sin(th), rng.uniform(-500, 500, n)], 1)
    vis = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)
    return uvw, vis, np.ones(n, np.float32)


def measure(n: int, npix: int, device: torch.device, repeat: int) -> tuple[float, float]:
    uvw, vis, weight = observation(n)
    cell = 1.0 / (4 * 5000)
    geom = ImageGeometry(npix, npix, cell, cell)
    dirty_image(uvw[:1000], vis[:1000], weight[:1000], geom, device, epsilon=1e-4)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        dev.synchronize(device)
        t0 = time.perf_counter()
        dirty_image(uvw, vis, weight, geom, device, epsilon=1e-4)
        dev.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    peak = dev.peak_memory_bytes(device) if device.type == "cuda" else None
    return best, (peak or 0) / 2**30


def profile(n: int, npix: int, device: torch.device) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    uvw, vis, weight = observation(n)
    cell = 1.0 / (4 * 5000)
    geom = ImageGeometry(npix, npix, cell, cell)
    dirty_image(uvw[:1000], vis[:1000], weight[:1000], geom, device, epsilon=1e-4)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        dirty_image(uvw, vis, weight, geom, device, epsilon=1e-4)
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    syncs = sum(e.count for e in events if e.key in (
        "aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize"))
    kernels = sum(e.count for e in events if e.key.startswith("cudaLaunch"))
    print(f"profile n={n:.0e} npix={npix}: {ops} aten operator calls, {syncs} scalar reads/syncs, "
          f"{kernels} kernel launches; load {os.getloadavg()[0]:.2f}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7", help="visibility counts, comma-separated")
    parser.add_argument("--npix", default="1024,2048", help="image sides, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    device = dev.select_device()
    if device.type == "cpu":
        os.environ["COSMIC_HORIZONS_SPREADING"] = "torch"
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    sides = [int(s) for s in args.npix.split(",")]
    if args.profile:
        profile(sizes[0], sides[0], device)
        return
    print(f"device: {dev.device_description(device)}; torch {torch.__version__}")
    print("| vis | npix | seconds | vis/s | peak device GiB | load |")
    print("|---|---|---|---|---|---|")
    for npix in sides:
        for n in sizes:
            dev.reset_peak_memory(device)
            seconds, peak = measure(n, npix, device, args.repeat)
            print(f"| {n:.0e} | {npix} | {seconds:.3f} | {n / seconds:.3e} | {peak:.2f} | "
                  f"{os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
