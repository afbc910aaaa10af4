"""Science against references: accuracy and speed, ours against the field's tools, same data, one run.

    python benchmarks/bench_references.py            # L and S band
    python benchmarks/bench_references.py --bands L
    python benchmarks/bench_references.py --only clean   # the CLEAN table alone

The observations are those of ``tests/science/test_references.py`` (VLA D configuration,
2 h, four channels, six point sources in all four quadrants out to the half-power radius),
simulated by pyuvsim. Each row compares one of our stages with a reference on the same file:

* imaging, dirty + PSF + Högbom CLEAN of 2,000 components: ours (``make_images`` on the
  uvfits, then FITS) against WSClean (the MS, same grid and weighting) and CASA ``tclean``
  (``importuvfits`` + ``tclean`` from the uvfits); the worst source position error (pixels)
  and flux error (%) against the truth, and the wall time;
* the dirty images, ours against WSClean's: the worst position difference between the two
  (pixels), the worst peak difference, and the relative RMS difference over the inner half;
* sky-model prediction (AlphaCal's model): ours against pyuvsim's visibilities, relative error
  and time;
* gain calibration: AlphaCal on the L-band data corrupted by pyuvdata's ``uvcalibrate`` with
  known gains (amplitude 0.5–2, any phase), worst relative gain error, and time.

A second table, CLEAN against the references (``--only clean`` runs it alone): on pyuvsim's
four point sources (12 × 60 s, L band) with known noise added, bright (σ = 5 mJy per sample,
the sky 1,000× the noise) and faint (σ = 0.5 Jy), and on the demo through the default
pipeline (AlphaCal, then ImageReconstruction; the references image AlphaCal's calibrated
file on the same grid): the dynamic range (peak over off-source σ), the off-source σ of the
restored image (robust, beyond two beams of every true source, over the pixels every tool
keeps: CASA blanks beyond its primary-beam limit), the share of the model's absolute flux
more than 1.5 beams from a true source, and the model's total flux. Ours is ``make_images``
with its defaults (the demo: the ImageReconstruction job); WSClean and CASA ``tclean``
(Högbom, major cycles) stop at 3σ of their residual, all at 1,000 components.

Wall times include reading the file and writing the images, each tool its own way, and are
single runs (the references are separate programs); the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.science import external as ext  # noqa: E402


def load() -> str:
    return "%.2f" % os.getloadavg()[0]


def source_errors(image_path: Path, sources, cell_arcsec: float) -> tuple[float, float]:
    """Worst position error (pixels) and worst |flux error| (%) of the sources in an image."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    image, wcs = ext.read_plane(image_path)
    xs, ys = wcs.world_to_pixel(SkyCoord([s.ra_deg for s in sources] * u.deg,
                                         [s.dec_deg for s in sources] * u.deg, frame="fk5"))
    pos, flux = 0.0, 0.0
    for s, x, y in zip(sources, xs, ys):
        px, py, peak = ext.peak_near(image, float(x), float(y))
        pos = max(pos, float(np.hypot(px - x, py - y)))
        flux = max(flux, abs(peak / s.flux_jy - 1) * 100)
    return pos, flux


def ours_image(uvfits: Path, out: Path, band, niter: int) -> tuple[float, Path, Path]:
    import torch

    from cosmic_horizons_lab.science.imaging import make_images, write_fits
    from cosmic_horizons_lab.science.visibilities import read_visibilities

    t = time.perf_counter()
    result = make_images(read_visibilities(uvfits), torch.device("cpu"), npix=band.npix,
                         cell_arcsec=band.cell_arcsec, niter=niter)
    restored = write_fits(out / "restored.fits", result.restored, result)
    dirty = write_fits(out / "dirty.fits", result.dirty, result)
    return time.perf_counter() - t, restored, dirty


def run_band(band, root: Path, niter: int) -> list[tuple[str, ...]]:
    from cosmic_horizons_lab.science.skymodel import Geometry, predict, sources_from_params
    from cosmic_horizons_lab.science.visibilities import read_visibilities

    rows = []
    sources = ext.field(band)
    template = ext.empty_observation(band)
    t = time.perf_counter()
    uv = ext.observe(template, sources)
    t_sim = time.perf_counter() - t
    uvfits = ext.write(uv, root / "obs.uvfits")
    ms = ext.write(uv, root / "obs.ms")
    n_vis = uv.Nblts * uv.Nfreqs * 2

    t_ours, restored, dirty = ours_image(uvfits, root, band, niter)
    p, f = source_errors(restored, sources, band.cell_arcsec)
    rows.append((band.name, "imaging (CLEAN 2000)", "ours", f"{p:.3f}", f"{f:.2f}", f"{t_ours:.2f}", load()))
    t = time.perf_counter()
    ws = ext.wsclean(ms, root / "wsclean", band, niter=niter)
    t_ws = time.perf_counter() - t
    p, f = source_errors(ws["image"], sources, band.cell_arcsec)
    rows.append((band.name, "imaging (CLEAN 2000)", "WSClean 3.1", f"{p:.3f}", f"{f:.2f}", f"{t_ws:.2f}", load()))
    try:
        t = time.perf_counter()
        casa = ext.casa_image(uvfits, root / "casa", band, niter=niter)
        t_casa = time.perf_counter() - t
        p, f = source_errors(casa, sources, band.cell_arcsec)
        rows.append((band.name, "imaging (CLEAN 2000)", "CASA 6.7 tclean", f"{p:.3f}", f"{f:.2f}",
                     f"{t_casa:.2f}", load()))
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        rows.append((band.name, "imaging (CLEAN 2000)", f"CASA: {exc}"[:60], "", "", "", load()))

    ours, ow = ext.read_plane(dirty)
    theirs, tw = ext.read_plane(ws["dirty"])
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    coords = SkyCoord([s.ra_deg for s in sources] * u.deg, [s.dec_deg for s in sources] * u.deg,
                      frame="fk5")
    dpos, dpeak = 0.0, 0.0
    for (ox, oy), (tx, ty) in zip(zip(*ow.world_to_pixel(coords)), zip(*tw.world_to_pixel(coords))):
        a, b = ext.peak_near(ours, float(ox), float(oy)), ext.peak_near(theirs, float(tx), float(ty))
        dpos = max(dpos, float(np.hypot((a[0] - ox) - (b[0] - tx), (a[1] - oy) - (b[1] - ty))))
        dpeak = max(dpeak, abs(a[2] / b[2] - 1) * 100)
    n = ours.shape[0]
    inner = (slice(n // 4, 3 * n // 4),) * 2
    rel = float(np.sqrt(np.mean((ours[inner] - theirs[inner]) ** 2) / np.mean(theirs[inner] ** 2)))
    rows.append((band.name, "dirty image, ours vs WSClean", f"inner-half rel RMS {rel:.1e}",
                 f"{dpos:.3f}", f"{dpeak:.2f}", "", load()))

    vs = read_visibilities(root / "obs.uvfits")
    comps = [{"ra_deg": s.ra_deg, "dec_deg": s.dec_deg, "flux_jy": s.flux_jy} for s in sources]
    t = time.perf_counter()
    model = predict(vs.uvw, vs.freqs, sources_from_params(comps, vs.phase_centre),
                    geometry=Geometry.of(vs))
    t_pred = time.perf_counter() - t
    truth = vs.vis[..., vs.pol_index("XX")]
    ok = vs.present
    err = np.linalg.norm(model[ok] - truth[ok]) / np.linalg.norm(truth[ok])
    rows.append((band.name, f"sky-model prediction ({n_vis // 2:,} vis)", f"ours, rel err {err:.1e}",
                 "", "", f"{t_pred:.2f}", load()))
    rows.append((band.name, f"sky-model prediction ({n_vis // 2:,} vis)", "pyuvsim 1.4", "", "",
                 f"{t_sim:.2f}", load()))
    return rows


def run_calibration(root: Path) -> list[tuple[str, ...]]:
    sys.path.insert(0, str(ROOT / "tests" / "science"))
    from tests.science.conftest import run_job

    band = ext.L_BAND
    sources = ext.field(band)
    uv = ext.observe(ext.empty_observation(band, n_times=12, integration_s=600.0), sources)
    gains = ext.known_gains(uv)
    path = ext.write(ext.corrupt(uv, gains), root / "gains.uvfits")
    comps = [{"ra_deg": s.ra_deg, "dec_deg": s.dec_deg, "flux_jy": s.flux_jy} for s in sources]
    t = time.perf_counter()
    rc, _ = run_job(root / "cal", "AlphaCal", {"rfi_strategy": "none", "sky_model": comps,
                                                "solution_interval": 0, "channel_bin": 0,
                                                "ref_antenna": 1},
                    {"id": "gains", "path": str(path), "format": "uvfits"})
    t_cal = time.perf_counter() - t
    assert rc == 0
    numbers = [int(n) for n in uv.telescope.antenna_numbers]
    with np.load(root / "cal" / "outputs" / "caltable.npz") as cal:
        solved = cal["gains"][0, 0]
        truth = gains[[numbers.index(int(n)) for n in cal["antenna_numbers"]]]
        truth = truth * np.exp(-1j * np.angle(truth[list(cal["antenna_numbers"]).index(1)]))
    err = float((np.abs(solved - truth) / np.abs(truth)).max())
    return [("L", "gain calibration (job, incl. start-up)", f"AlphaCal vs pyuvdata UVCal truth, max rel {err:.1e}",
             "", "", f"{t_cal:.2f}", load())]


CLEAN_NOISE_JY = {"bright": 0.005, "faint": 0.5}


def clean_quality(image: np.ndarray, model: np.ndarray, wcs, sources, beam_px: float,
                  keep: np.ndarray) -> tuple[float, float, float, float]:
    """(dynamic range, off-source σ, spurious share of |model|, model total) of one image."""
    xs, ys = ext.sky_pixels(wcs, sources)
    off = ~ext.near_sources(image.shape, xs, ys, 2.0 * beam_px) & keep
    sigma = ext.mad_sigma(image[off])
    model = np.nan_to_num(model)
    on = ext.near_sources(model.shape, xs, ys, 1.5 * beam_px)
    return (float(np.nanmax(image)) / sigma, sigma, ext.spurious_fraction(model, on),
            float(model.sum()))


def clean_rows(name: str, images: dict[str, tuple[Path, Path, float]], sources, beam_px: float
               ) -> list[tuple[str, ...]]:
    """Rows of the CLEAN table for one field: ``images`` maps a tool to (image, model, wall)."""
    planes = {tool: (ext.read_plane(img), ext.read_plane(mod)[0], wall)
              for tool, (img, mod, wall) in images.items()}
    keep = np.logical_and.reduce([np.isfinite(p[0][0]) for p in planes.values()])
    rows = []
    for tool, ((image, wcs), model, wall) in planes.items():
        dr, sigma, spurious, total = clean_quality(image, model, wcs, sources, beam_px, keep)
        rows.append((name, tool, f"{dr:,.0f}", f"{sigma * 1e3:.3f}", f"{100 * spurious:.2f}",
                     f"{total:.3f}", f"{wall:.1f}", load()))
    return rows


def run_clean(root: Path) -> list[tuple[str, ...]]:
    import torch
    from astropy.io import fits

    from cosmic_horizons_lab.science.imaging import make_images, write_fits
    from cosmic_horizons_lab.science.visibilities import read_visibilities
    from tests.science.conftest import run_job

    band = ext.L_BAND
    sources = ext.field(band)[:4]
    uv = ext.observe(ext.empty_observation(band, n_times=12, integration_s=60.0), sources)
    rows = []
    for name, sigma in CLEAN_NOISE_JY.items():
        d = root / name
        d.mkdir()
        noisy = ext.add_noise(uv, sigma)
        uvfits, ms = ext.write(noisy, d / "obs.uvfits"), ext.write(noisy, d / "obs.ms")
        t = time.perf_counter()
        result = make_images(read_visibilities(uvfits), torch.device("cpu"), npix=band.npix,
                             cell_arcsec=band.cell_arcsec, niter=1000)
        ours = (write_fits(d / "restored.fits", result.restored, result),
                write_fits(d / "model.fits", result.clean.model, result, bunit="JY/PIXEL"))
        images = {"ours": (*ours, time.perf_counter() - t)}
        images.update(_references(uvfits, ms, d, band))
        rows += clean_rows(f"L, 4 sources, {name} (σ {sigma * 1e3:g} mJy)", images, sources,
                           result.beam.major)
    # the demo through the default pipeline
    from pyuvdata import UVData

    from cosmic_horizons_lab.data import DEMO_DATASETS

    dataset = {"id": "VLA.TDEM0003.1src", "path": str(DEMO_DATASETS["VLA.TDEM0003.1src"]),
               "format": "uvfits"}
    d = root / "demo"
    t = time.perf_counter()
    rc, _ = run_job(d / "cal", "AlphaCal", {}, dataset)
    t_cal = time.perf_counter() - t
    t = time.perf_counter()
    rc2, _ = run_job(d / "img", "ImageReconstruction", {}, dataset, inputs=[d / "cal" / "outputs"])
    t_img = time.perf_counter() - t
    assert rc == rc2 == 0
    out = d / "img" / "outputs"
    header = fits.getheader(out / "restored.fits")
    calibrated = d / "cal" / "outputs" / "calibrated.uvfits"
    cal_uv = UVData.from_file(str(calibrated))
    demo_band = ext.band_of_image(header, cal_uv)
    cat = cal_uv.phase_center_catalog[int(cal_uv.phase_center_id_array[0])]
    centre = [ext.PointSource(float(np.degrees(cat["cat_lon"])), float(np.degrees(cat["cat_lat"])), 1.0)]
    images = {"ours (ImageReconstruction job)": (out / "restored.fits", out / "model.fits", t_img)}
    images.update(_references(calibrated, ext.write(cal_uv, d / "calibrated.ms"), d, demo_band))
    rows += clean_rows(f"demo, default pipeline (AlphaCal {t_cal:.0f} s)", images, centre,
                       header["BMAJ"] / abs(header["CDELT2"]))
    return rows


def _references(uvfits: Path, ms: Path, d: Path, band) -> dict[str, tuple[Path, Path, float]]:
    out = {}
    t = time.perf_counter()
    ws = ext.wsclean(ms, d / "wsclean", band, niter=1000)
    out["WSClean 3.1"] = (ws["image"], ws["image"].with_name("ws-model.fits"), time.perf_counter() - t)
    try:
        t = time.perf_counter()
        casa = ext.casa_clean(uvfits, d / "casa", band, niter=1000)
        out["CASA 6.7 tclean"] = (casa["image"], casa["model"], time.perf_counter() - t)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"CASA failed on {uvfits}: {exc}", file=sys.stderr)
    return out


def print_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", default="L,S")
    parser.add_argument("--niter", type=int, default=2000)
    parser.add_argument("--only", choices=["accuracy", "clean"], default=None,
                        help="run one table only")
    args = parser.parse_args()
    rows, clean = [], []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "clean":
            for name in args.bands.split(","):
                band = {"L": ext.L_BAND, "S": ext.S_BAND}[name]
                (Path(tmp) / name).mkdir()
                rows += run_band(band, Path(tmp) / name, args.niter)
            (Path(tmp) / "cal").mkdir()
            rows += run_calibration(Path(tmp) / "cal")
        if args.only != "accuracy":
            (Path(tmp) / "clean").mkdir()
            clean = run_clean(Path(tmp) / "clean")
    if rows:
        print_table(("band", "measure", "tool", "worst position err (px)", "worst flux err (%)",
                     "wall (s)", "load"), rows)
    if clean:
        print()
        print_table(("field", "tool", "dynamic range", "off-source σ (mJy/beam)",
                     "model flux off the sources (%)", "model flux (Jy)", "wall (s)", "load"), clean)


if __name__ == "__main__":
    main()
