"""Flagging quality against AOFlagger, in a bright and a faint field, on external simulations.

    python benchmarks/bench_flagging_references.py            # 3 h track, 64 channels
    python benchmarks/bench_flagging_references.py --quick    # 2 h, 32 channels (the tests' size)

The observations come from ``tests/science/rfi.py`` (it imports nothing from the package):
the VLA in D configuration at L band, 20 s integrations, 2 MHz channels, six point sources
out to 14′, 10 narrowband and 10 broadband RFI injections of 1σ to 200σ. σ is the thermal
noise of one visibility (the standard deviation of its real part); the bright field holds
5.8 Jy of sky (about 170σ per visibility), the faint one 0.02 Jy.

Columns: precision (flagged samples holding RFI / flagged samples), recall (flagged RFI
samples / RFI samples), recall over RFI samples of ≥ 5σ and ≥ 20σ, the fraction flagged
of the same observation without RFI ("clean"), and the rate in visibilities per second
(one run each; the load average is printed with each row, since other work on a shared
machine changes rates 2-3×). Ours runs on the CPU with torch's threads; AOFlagger
(``aoflagger`` PyPI package, generic strategy, GPL: a benchmark reference only) baseline
by baseline as its Python API works.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cosmic_horizons_lab.science.flagging import STRATEGIES, flag_visibilities
from tests.science import rfi


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def row(label: str, field: str, flags: np.ndarray, obs: rfi.Observation, clean: float,
        seconds: float) -> str:
    s = rfi.score(flags, obs)
    return (f"| {field} | {label} | {s.precision:.3f} | {s.recall:.3f} | {s.recall_5:.3f} | "
            f"{s.recall_20:.3f} | {clean:.4f} | {obs.vis.size / seconds:.2e} | {load()} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 h and 32 channels, as the tests")
    args = ap.parse_args()
    size = {"n_times": 360, "n_channels": 32} if args.quick else {}
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load {load()}")
    print("| field | flagger | precision | recall | recall ≥5σ | recall ≥20σ | flagged, clean | vis/s | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, base in (("bright", rfi.BRIGHT), ("faint", rfi.FAINT)):
        obs = rfi.observe(dataclasses.replace(base, **size))
        none = np.zeros(obs.vis.shape, bool)
        for strategy in STRATEGIES:
            t0 = time.perf_counter()
            flags = flag_visibilities(obs.vis, none, strategy, cpu)
            dt = time.perf_counter() - t0
            clean = float(flag_visibilities(obs.clean, none, strategy, cpu).mean())
            print(row(f"ours, `{strategy}`", name, flags, obs, clean, dt), flush=True)
        t0 = time.perf_counter()
        flags = rfi.aoflagger_flags(obs.vis)
        dt = time.perf_counter() - t0
        clean = float(rfi.aoflagger_flags(obs.clean).mean())
        print(row("AOFlagger (generic)", name, flags, obs, clean, dt), flush=True)
    print(f"\nshape (baselines, times, channels, polarisations): {obs.vis.shape}; "
          f"RFI in {obs.truth.mean():.1%} of samples")


if __name__ == "__main__":
    main()
