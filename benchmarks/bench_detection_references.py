"""Source finding against PyBDSF, and cross-matching against NVSS-sized catalogues (issue 11).

    python benchmarks/bench_detection_references.py [--skip-detection] [--skip-crossmatch]

Detection: the fields of ``tests/science/test_detection_references.py`` (nine point sources,
10σ–1000σ, all four quadrants, pyuvsim with thermal noise; and six bright sources without
noise), imaged by WSClean 3.1 and by our ImageReconstruction agent; on each restored image our finder (local noise map; and, for
comparison, the same finder with one global σ) and PyBDSF (defaults). Completeness: true
sources found within half a beam; purity: found sources within a beam of a true one; the
position and flux columns are the worst over the sources, ours against PyBDSF's.

Cross-match: 300 found sources in a 512² image against 10k, 50k and 1.8M reference sources
spread over the whole sky (each size in its own child process, so that its peak RSS is
its own): ``anomalies()`` with the image as footprint, timed, with the peak of the
allocations it makes (tracemalloc: NumPy's arrays are traced) and the child process's
peak RSS (everything: the interpreter, astropy, SciPy, the generated catalogue and the
match, an upper bound). Also reading a
1.8M-row catalogue from FITS and CSV with ``read_catalogue``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SNRS = (10, 14, 20, 30, 50, 100, 200, 500, 1000)


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def detection_rows(root: Path) -> list[list[str]]:
    from cosmic_horizons_lab.science.detection import find_sources, read_image, robust_sigma
    from tests.science import external as ext
    from tests.science.conftest import run_job

    band = ext.L_BAND
    template = ext.empty_observation(band, n_times=12, integration_s=600.0)
    sigma_image = ext.image_noise(template, 1.0)
    sources = ext.snr_field(band, sigma_image, SNRS)
    uv = ext.add_noise(ext.observe(template, sources), 1.0)
    ms, uvfits = ext.write(uv, root / "obs.ms"), ext.write(uv, root / "obs.uvfits")
    bright = ext.field(band)
    bright_uv = ext.observe(template, bright)
    bright_ms, bright_uvfits = ext.write(bright_uv, root / "bright.ms"), ext.write(bright_uv, root / "bright.uvfits")
    images = {"noisy field, WSClean 3.1": (ext.wsclean(ms, root / "wsclean", band, niter=5000)["image"], sources),
              "bright noiseless field, WSClean 3.1":
                  (ext.wsclean(bright_ms, root / "bright", band, niter=2000)["image"], bright)}
    for label, data, niter, truth in (("noisy field, ours", uvfits, 5000, sources),
                                      ("bright noiseless field, ours", bright_uvfits, 2000, bright)):
        job = root / label.replace(" ", "-").replace(",", "")
        rc, _ = run_job(job, "ImageReconstruction",
                        {"npix": band.npix, "cell_arcsec": band.cell_arcsec, "niter": niter},
                        {"id": "ext", "path": str(data), "format": "uvfits"}, timeout=900)
        if rc == 0:
            images[label] = (job / "outputs" / "restored.fits", truth)
        else:
            print(f"our ImageReconstruction failed on the {label}: exit code {rc}")
    t = time.perf_counter()
    refs = dict(zip(images, ext.pybdsf([path for path, _ in images.values()])))
    bdsf_s = (time.perf_counter() - t) / len(images)  # per image, incl. a share of the import
    rows = []
    for name, (path, sources) in images.items():
        img = read_image(path)
        tx, ty = img.wcs.world_to_pixel_values([s.ra_deg for s in sources], [s.dec_deg for s in sources])
        beam = float(np.sqrt(img.beam_area_pixels * 4 * np.log(2) / np.pi))
        ref = refs[name]
        bx, by = img.wcs.world_to_pixel_values(ref["ra_deg"], ref["dec_deg"])
        bflux = np.asarray(ref["total_flux"])
        finders = {
            "ours (local noise map)": lambda img=img: find_sources(img)[0],
            "ours (one global σ)": lambda img=img: find_sources(img, sigma=robust_sigma(img.data))[0],
        }
        for finder, run in finders.items():
            t = time.perf_counter()
            table = run()
            elapsed = time.perf_counter() - t
            fx, fy = np.asarray(table["x"]), np.asarray(table["y"])
            found = 0
            worst_pos = worst_flux = 0.0
            for x, y in zip(tx, ty):
                d = np.hypot(fx - x, fy - y)
                if not len(d) or d.min() > beam / 2:
                    continue
                found += 1
                i = int(np.argmin(d))
                db = np.hypot(bx - x, by - y)
                j = int(np.argmin(db))
                if db[j] < beam / 2:
                    worst_pos = max(worst_pos, float(np.hypot(fx[i] - bx[j], fy[i] - by[j])))
                    worst_flux = max(worst_flux, abs(float(table["flux_jy"][i] / bflux[j] - 1)))
            near = np.hypot(fx[:, None] - tx[None], fy[:, None] - ty[None]).min(axis=1) <= beam \
                if len(fx) else np.zeros(0, bool)
            rows.append([name, finder, f"{found}/{len(sources)}", f"{near.sum()}/{len(table)}",
                         str(int((~near).sum())), f"{worst_pos:.3f}", f"{100 * worst_flux:.2f}",
                         f"{elapsed:.2f}", load()])
        bnear = np.hypot(bx[:, None] - tx[None], by[:, None] - ty[None]).min(axis=1) <= beam
        bfound = sum(np.hypot(bx - x, by - y).min() <= beam / 2 for x, y in zip(tx, ty))
        rows.append([name, "PyBDSF 1.14 (defaults)", f"{bfound}/{len(sources)}",
                     f"{bnear.sum()}/{len(bx)}", str(int((~bnear).sum())), "", "", f"{bdsf_s:.1f}", load()])
    return rows


_CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
sys.path.insert(0, sys.argv[2])
from astropy.table import Table
from astropy.wcs import WCS
from cosmic_horizons_lab.science.detection import Image, anomalies

n_ref = int(sys.argv[1])
rng = np.random.default_rng(1)
n, cell = 512, 4.0 / 3600
w = WCS(naxis=2)
w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
w.wcs.crval = [150.0, 30.0]
w.wcs.cdelt = [-cell, cell]
w.wcs.crpix = [n / 2 + 1, n / 2 + 1]
img = Image(data=np.zeros((n, n), np.float32), wcs=w, beam_area_pixels=20.0, beam_fwhm_deg=4 * cell,
            header=None)
fra, fdec = w.pixel_to_world_values(rng.uniform(0, n - 1, 300), rng.uniform(0, n - 1, 300))
found = Table({"ra_deg": fra, "dec_deg": fdec, "flux_jy": rng.uniform(0.01, 1, 300)})
ra = rng.uniform(0, 360, n_ref)
dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n_ref)))
ra[:250], dec[:250] = fra[:250] + 1e-4, fdec[:250]  # 250 of the found sources are catalogued
ref = Table({"ra_deg": ra, "dec_deg": dec, "flux_jy": rng.uniform(0.0025, 2, n_ref)})
anomalies(found[:5], ref[:1000], match_radius_deg=3 * cell, footprint=img)  # imports, warm-up
tracemalloc.start()
t = time.perf_counter()
out = anomalies(found, ref, match_radius_deg=3 * cell, footprint=img, min_flux_jy=0.005)
elapsed = time.perf_counter() - t
traced = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
kinds = {k: int((out["kind"] == k).sum()) for k in ("new_source", "flux_change", "missing_source")}
print("RESULT" + json.dumps({"n": n_ref, "s": elapsed, "traced": traced, "peak_rss": peak,
                             "kinds": kinds}))
"""


def crossmatch_rows(sizes: tuple[int, ...]) -> list[list[str]]:
    rows = []
    for n in sizes:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(REPO)], capture_output=True,
                              text=True, timeout=900, check=False)
        if proc.returncode != 0:
            rows.append([f"{n:,}", "failed", proc.stderr[-300:], "", "", load()])
            continue
        r = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][6:])
        mib = 1024**2
        rows.append([f"{n:,}", f"{r['s']:.3f}", f"{r['traced'] / mib:.1f}", f"{r['peak_rss'] / mib:.0f}",
                     json.dumps(r["kinds"]), load()])
    return rows


def catalogue_read_rows(n: int, root: Path) -> list[list[str]]:
    from astropy.table import Table

    from cosmic_horizons_lab.science.detection import read_catalogue

    rng = np.random.default_rng(2)
    t = Table({"ra_deg": rng.uniform(0, 360, n), "dec_deg": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
               "flux_jy": rng.uniform(0.0025, 2, n)})
    rows = []
    for suffix in (".fits", ".csv"):
        path = root / f"nvss{suffix}"
        t.write(path, overwrite=True, format="ascii.csv" if suffix == ".csv" else None)
        start = time.perf_counter()
        back = read_catalogue(path)
        elapsed = time.perf_counter() - start
        assert len(back) == n
        rows.append([f"read {n:,} rows, {suffix[1:].upper()} ({path.stat().st_size / 1024**2:.0f} MiB)",
                     f"{elapsed:.2f}", load()])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-detection", action="store_true")
    ap.add_argument("--skip-crossmatch", action="store_true")
    ap.add_argument("--sizes", default="10000,50000,1800000")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_detection:
            print(table(["image", "finder", "completeness", "purity", "spurious",
                         "worst Δpos vs PyBDSF (px)", "worst Δflux vs PyBDSF (%)", "time (s)", "load"],
                        detection_rows(root)))
            print()
        if not args.skip_crossmatch:
            sizes = tuple(int(s) for s in args.sizes.split(","))
            print(table(["reference rows", "anomalies() (s)", "traced peak (MiB)",
                         "process peak RSS (MiB)", "kinds", "load"], crossmatch_rows(sizes)))
            print()
            print(table(["catalogue", "time (s)", "load"], catalogue_read_rows(max(sizes), root)))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
