"""Sky map benchmark (figures, not a timed test): from displaying the Sky widget to its first frame.

    python benchmarks/bench_sky.py [--runs 30] [--sources 1000] [--npix 1024] [--json out.json]

It starts a real JupyterLab with the extension (temporary root, own store), runs a Script job that
writes a ``--npix``² restored image (FITS, SIN projection) and a catalogue of ``--sources`` sources
on it, and opens a notebook in headless Chromium (WebGL2 in software) that shows ``job.sky()``
``--runs`` times (the cell run again: the old view goes, a new one renders). Each view measures,
in the page, the time from its ``render()`` to the first animation frame after the image layer
(downloaded from the extension and decoded by Aladin Lite) and the sources are on the map
(``data-first-frame-ms``). The first view also loads Aladin Lite itself (2.3 MB, its WebAssembly
compiled): it is reported apart as "cold"; p50/p99 are over the others. The floor is 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_ui import notebook, pct, run_cells
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, start_lab, stop_lab

FLOOR_MS = 1000.0

JOB_SCRIPT = """
import os
from pathlib import Path
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from cosmic_horizons_lab.executor import args
from cosmic_horizons_lab.protocol.jobdir import JOB_DIR_ENV
n, k = args["npix"], args["sources"]
cell = 1.0 / n  # one degree across
w = WCS(naxis=2)
w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
w.wcs.crval = [150.0, 2.0]
w.wcs.crpix = [n / 2 + 1, n / 2 + 1]
w.wcs.cdelt = [-cell, cell]
rng = np.random.default_rng(7)
x, y = rng.uniform(10, n - 10, k), rng.uniform(10, n - 10, k)
ra, dec = w.pixel_to_world_values(x, y)
out = Path(os.environ[JOB_DIR_ENV]) / "outputs"
out.mkdir(exist_ok=True)
fits.PrimaryHDU(rng.normal(0, 1e-3, (n, n)).astype("f4"), header=w.to_header()).writeto(out / "restored.fits")
Table({"id": np.arange(k), "ra_deg": ra, "dec_deg": dec, "flux_jy": rng.uniform(0.01, 1, k),
       "peak_jy_beam": rng.uniform(0.01, 1, k), "snr": rng.uniform(5, 500, k)}).write(out / "sources.ecsv")
result = {"sources_found": k}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="views rendered (the first is the cold one)")
    parser.add_argument("--sources", type=int, default=1000, help="sources in the catalogue")
    parser.add_argument("--npix", type=int, default=1024, help="the image's side, pixels")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    base = Path(tempfile.mkdtemp(prefix="bench-sky-"))
    root = base / "root"
    root.mkdir()
    (root / "sky_job.py").write_text(JOB_SCRIPT)
    server = start_lab(root, base / "state")
    try:
        job = server.request("POST", "jobs/submit", {"agent": "Script", "params": {
            "path": "sky_job.py", "args": {"npix": args.npix, "sources": args.sources}}})
        job = server.wait_status(job["id"], {"COMPLETED", "FAILED"}, timeout=300)
        assert job["status"] == "COMPLETED", job
        cells = [f'from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()\nsky = lab.job("{job["id"]}").sky()',
                 "sky"]
        (root / "bench.ipynb").write_text(notebook(cells))
        times: list[float] = []
        parts: list[tuple[float, float]] = []  # (map made, layers drawn), ms from render
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.lab_url("lab/tree/bench.ipynb"))
            page.wait_for_selector(".jp-Notebook", timeout=90_000)
            run_cells(page, len(cells))
            for i in range(args.runs):
                if i:
                    # Run the display cell again: its output (the old view) is replaced by a new view.
                    page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-InputPrompt").click()
                    page.keyboard.press("Control+Enter")
                    page.wait_for_function("() => document.querySelectorAll('.chw-sky').length === 1 && "
                                           "document.querySelector('.chw-sky').dataset.run === undefined",
                                           timeout=60_000)
                page.wait_for_selector(".chw-sky[data-first-frame-ms]", timeout=120_000)
                sky = page.locator(".chw-sky")
                assert sky.get_attribute("data-sources") == str(args.sources)
                assert sky.get_attribute("data-failed") is None
                times.append(float(sky.get_attribute("data-first-frame-ms")))
                parts.append((float(sky.get_attribute("data-map-ms")), float(sky.get_attribute("data-layers-ms"))))
                page.evaluate(f"() => {{ document.querySelector('.chw-sky').dataset.run = '{i}'; }}")
            browser.close()
    finally:
        stop_lab(server)

    cold, warm = times[0], times[1:]
    figures: dict[str, Any] = {
        "sources": args.sources, "image_pixels": f"{args.npix}x{args.npix}", "runs": len(warm),
        "cold_ms": round(cold, 1), "p50_ms": round(pct(warm, 50), 1), "p99_ms": round(pct(warm, 99), 1),
        "mean_ms": round(statistics.fmean(warm), 1),
        "map_p50_ms": round(pct([p[0] for p in parts[1:]], 50), 1),
        "layers_p50_ms": round(pct([p[1] for p in parts[1:]], 50), 1), "max_ms": round(max(warm), 1),
        "floor_ms": FLOOR_MS, "load_average": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    print(f"Sky widget: display → first frame with a {args.npix}² image and {args.sources} sources "
          f"(headless Chromium, software WebGL2)")
    print(f"| {'figure':<10} | {'ms':>8} |")
    print(f"|{'-' * 12}|{'-' * 10}|")
    for key in ("cold_ms", "p50_ms", "p99_ms", "mean_ms", "max_ms", "map_p50_ms", "layers_p50_ms"):
        print(f"| {key:<10} | {figures[key]:>8.1f} |")
    print(f"runs {len(warm)} (+1 cold); floor {FLOOR_MS:.0f} ms: "
          f"{'met' if figures['p99_ms'] < FLOOR_MS else 'NOT met'} at p99; load average {figures['load_average']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
