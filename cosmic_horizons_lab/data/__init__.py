"""Data shipped with the package: the demo observation and the VLA antenna layout.

See ``PROVENANCE.md`` in this folder for where each file comes from, its
licence and its checksum.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent

#: Demo datasets by registry id -> the file to read.
DEMO_DATASETS: dict[str, Path] = {
    "VLA.TDEM0003.1src": DATA_DIR / "day2_TDEM0003_10s_norx_1src_1spw.uvfits",
}

#: SHA-256 of each demo file, so a registry (or a test) can tell a damaged copy.
DEMO_SHA256: dict[str, str] = {
    "VLA.TDEM0003.1src": "926ed6175d6725f6f27b04a97b658d13341f528a3847b5bc1b7246a24bde4b27",
}

#: Synthetic datasets (``SIM.<name>``) by registry id -> what they hold. The simulator
#: (``science.simulate.SIM_PRESETS``) generates each on first use; the server lists them
#: from here without importing the science.
SIMULATED_DATASETS: dict[str, str] = {
    "SIM.small": (
        "19 VLA antennas, 16 x 60 s, 32 channels at 1.4 GHz, RR/LL; "
        "a 1 Jy calibrator at the phase centre and two weaker sources; gains, noise."
    ),
    "SIM.rfi": (
        "19 VLA antennas, 64 x 10 s, 64 channels at 36 GHz, RR/LL; a 1 Jy "
        "calibrator, gains, noise, and injected RFI (channel stripes, time bursts, "
        "blobs) with a known mask."
    ),
    "SIM.sky": (
        "19 VLA antennas, 48 x 5 min over 4 h, 16 channels over 1-2 GHz, RR/LL; "
        "five point sources and a Gaussian, unit gains, low noise: an imaging test."
    ),
}

#: The size of each preset's uvfits file once generated (the file is a pure function of the
#: preset), so a listing shows what staging or a job will read before anything generated it.
#: tests/science/test_datasets.py generates each preset and checks these.
SIMULATED_BYTES: dict[str, int] = {
    "SIM.small": 2_304_000,
    "SIM.rfi": 17_536_320,
    "SIM.sky": 3_703_680,
}

#: The shape of the demo and of each preset, as ``science.inspection describe`` reads it from the
#: file (a preset's file is a pure function of the preset), so the server lists them without a
#: science worker: for the demo alone that worker was 3 s of CPU (numpy, pyuvdata) at every
#: server's start, taken from the first requests and jobs. tests/science/test_datasets.py reads
#: each file with pyuvdata and checks these.
BUILTIN_SHAPES: dict[str, dict[str, int]] = {
    "VLA.TDEM0003.1src": {"baselines": 153, "times": 15, "channels": 64, "polarizations": 4, "visibilities": 348160},
    "SIM.small": {"baselines": 171, "times": 16, "channels": 32, "polarizations": 2, "visibilities": 175104},
    "SIM.rfi": {"baselines": 171, "times": 64, "channels": 64, "polarizations": 2, "visibilities": 1400832},
    "SIM.sky": {"baselines": 171, "times": 48, "channels": 16, "polarizations": 2, "visibilities": 262656},
}

__all__ = ["BUILTIN_SHAPES", "DATA_DIR", "DEMO_DATASETS", "DEMO_SHA256", "SIMULATED_BYTES", "SIMULATED_DATASETS"]
