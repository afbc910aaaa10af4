"""Reading a dataset to say what it is: its shape, and whether the agents can use it.

This is the science side of the server's dataset pages. It reads the data with
pyuvdata, so the server never runs it in its own process: it starts
``python -m cosmic_horizons_lab.science.inspection {describe|validate} PATH...``,
with a time and a memory limit, and reads one JSON document back (a list, one
entry per path). That keeps numpy, pyuvdata and a multi-GiB read out of the server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cosmic_horizons_lab.protocol.datasets import VISIBILITY_FORMATS
from cosmic_horizons_lab.science.visibilities import describe_dataset, quiet

#: Reading every sample of a file larger than this for validation is not worth it; header only.
FULL_READ_LIMIT = 2 * 1024**3


def inspect_file(path: Path) -> dict[str, Any]:
    """Format, shape, size, flagged fraction, order and problems of one dataset file (blocking)."""
    problems: list[str] = []
    try:
        desc = describe_dataset(path)
    except Exception as exc:
        return {"valid": False, "format": path.suffix.lstrip(".") or "unknown", "size_bytes": path.stat().st_size,
                "shape": None, "flagged_fraction": None, "problems": [f"unreadable: {type(exc).__name__}: {exc}"]}
    out: dict[str, Any] = {**desc, "flagged_fraction": None, "outlier_fraction": None, "blt_order": None}
    if desc["format"] not in VISIBILITY_FORMATS:
        problems.append(f"{desc['format']} is not a visibility format the calibration agents read")
    elif desc["size_bytes"] > FULL_READ_LIMIT:
        problems.append("too large to read whole for validation: flag statistics not measured")
    else:
        from pyuvdata import UVData

        with quiet():
            uv = UVData.from_file(str(path))
        data, flags = uv.data_array, uv.flag_array
        out["flagged_fraction"] = round(float(flags.mean()), 6) if flags.size else None
        finite = np.isfinite(data)
        if not finite.all():
            problems.append(f"{int((~finite).sum())} visibilities are NaN or infinite")
        good = np.abs(data[finite & ~flags])
        if good.size:
            med = float(np.median(good))
            mad = float(np.median(np.abs(good - med))) * 1.4826
            out["outlier_fraction"] = round(float((good > med + 6 * mad).mean()), 6) if mad > 0 else 0.0
            if float((good == 0).mean()) > 0.01:
                problems.append("more than 1% of unflagged visibilities are exactly zero")
        if out["flagged_fraction"] is not None and out["flagged_fraction"] >= 0.999:
            problems.append("every visibility is flagged")
        if bool(np.all(uv.ant_1_array == uv.ant_2_array)):
            problems.append("autocorrelations only: nothing to calibrate or image")
        out["blt_order"] = _blt_order(uv.time_array, uv.baseline_array)
        out["spectral_windows"] = int(uv.Nspws)
        if uv.Nspws > 1:
            problems.append(f"{uv.Nspws} spectral windows: the agents process the first one only")
    out["problems"] = problems
    out["valid"] = desc["format"] in VISIBILITY_FORMATS and not any(
        p.startswith(("every", "autocorrelations", "unreadable")) or "NaN" in p for p in problems
    )
    return out


def _blt_order(times: np.ndarray, baselines: np.ndarray) -> str:
    if np.all(np.diff(times) >= 0):
        return "time-baseline"
    if np.all(np.diff(baselines) >= 0):
        return "baseline-time"
    return "unordered"


def describe(path: Path) -> dict[str, Any] | None:
    """The dataset's shape as :func:`.visibilities.describe_dataset` reads it; None for what
    cannot be opened (listed, without a shape)."""
    try:
        return describe_dataset(path).get("shape")
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("describe", "validate"):
        print("usage: python -m cosmic_horizons_lab.science.inspection {describe|validate} PATH...",
              file=sys.stderr)
        return 2
    run = describe if args[0] == "describe" else inspect_file
    json.dump([run(Path(p)) for p in args[1:]], sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
