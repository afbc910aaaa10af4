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

__all__ = ["DATA_DIR", "DEMO_DATASETS", "DEMO_SHA256"]
