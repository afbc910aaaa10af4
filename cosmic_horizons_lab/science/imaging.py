"""From calibrated visibilities to science images: weighting, dirty image and PSF, CLEAN, FITS.

Images are Stokes I from the parallel hands, in Jy/beam: the dirty image and
PSF are divided by the sum of weights, so a 1 Jy point source at the phase
centre peaks at 1. FITS files carry a SIN-projected celestial WCS centred on
the phase centre (``CDELT1 < 0``: east to the left), a frequency and a Stokes
axis, and the restoring beam (``BMAJ``/``BMIN``/``BPA``).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmic_horizons_lab.science.clean import Beam, CleanResult, fit_beam, restore
from cosmic_horizons_lab.science.deconvolution import cotton_schwab
from cosmic_horizons_lab.science.gridding import DEFAULT_EPSILON, ImageGeometry, dirty_image, dirty_images
from cosmic_horizons_lab.science.noise import image_noise, visibility_noise
from cosmic_horizons_lab.science.skymodel import C
from cosmic_horizons_lab.science.visibilities import VisibilitySet

ARCSEC = np.pi / 180 / 3600
#: The PSF's gridding accuracy when the images' is finer: WSClean's wgridder default
#: (``-wgridder-accuracy``), and finer than its default gridder, which errs by several % at
#: the image's corners (tests/science/test_references.py). The PSF is the beam fit's input
#: and the minor cycles' model of a source; what the minor cycles get wrong by it, the next
#: major cycle's residual (gridded at the images' ``epsilon``) shows and corrects. 1e-4
#: instead of 1e-5 takes the PSF pass from 6 to 5 cells of kernel support: 20-22 % of its
#: CPU time at 2.6e6 visibilities, 512² and 2048²; the PSF moves by < 6e-5 of its peak.
PSF_EPSILON = 1e-4


@dataclass
class ImagingResult:
    geometry: ImageGeometry
    dirty: np.ndarray
    psf: np.ndarray
    beam: Beam
    clean: CleanResult | None
    restored: np.ndarray | None
    n_visibilities: int
    ref_freq: float
    phase_centre: tuple[float, float]
    extras: dict[str, Any] = field(default_factory=dict)


def visibility_rows(vs: VisibilitySet, stokes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stokes I samples as flat rows: uvw in wavelengths (n, 3), vis (n,), statistical
    weight (n,), zero where the sample is unusable. ``stokes``: ``vs.stokes_i()`` when the
    caller already has it."""
    vis, flags, weight = stokes if stokes is not None else vs.stokes_i()
    lam = C / vs.freqs
    uvw = vs.uvw[:, :, None, :] / lam[None, None, :, None]
    usable = ~flags & vs.present[:, :, None] & np.isfinite(vis) & (weight > 0)
    return uvw.reshape(-1, 3), vis.reshape(-1), np.where(usable, weight, 0.0).reshape(-1)


def thermal_noise(vs: VisibilitySet) -> float:
    """Noise σ (real or imaginary part) of a unit-weight Stokes I sample, from data that hold
    no sky (Stokes V, differences in time: :func:`.noise.visibility_noise`)."""
    return visibility_noise(vs).sigma


def imaging_weights(uvw: np.ndarray, usable: np.ndarray, geom: ImageGeometry, scheme: str,
                    robust: float = 0.0) -> np.ndarray:
    """Natural, uniform or Briggs weights (Briggs 1995) per row, from the statistical ones.

    Uniform and Briggs count samples per uv cell of the image's grid,
    counting each sample's Hermitian mirror too, since both fill the grid.
    """
    w = np.asarray(usable, np.float64)
    if scheme == "natural":
        return w
    nv, nu = geom.grid_shape
    iu = np.round(uvw[:, 0] * geom.cell_x * nu).astype(np.int64)
    iv = np.round(uvw[:, 1] * geom.cell_y * nv).astype(np.int64)
    cell = np.remainder(iv, nv) * nu + np.remainder(iu, nu)
    mirror = np.remainder(-iv, nv) * nu + np.remainder(-iu, nu)
    density = np.bincount(cell, weights=w, minlength=nv * nu) + \
        np.bincount(mirror, weights=w, minlength=nv * nu)
    d = density[cell]
    if scheme == "uniform":
        return np.where(d > 0, w / np.maximum(d, 1e-30), 0.0)
    if scheme == "briggs":
        f2 = (5 * 10 ** (-robust)) ** 2 / ((density**2).sum() / max(2 * w.sum(), 1e-30))
        return w / (1 + d * f2)
    raise ValueError(f"unknown weighting {scheme!r}")


def choose_geometry(uvw: np.ndarray, usable: np.ndarray, npix: int,
                    cell_arcsec: float | None) -> ImageGeometry:
    """Square image of ``npix``; the cell samples the longest baseline's fringe 4× by default."""
    if cell_arcsec is None or cell_arcsec <= 0:
        uvmax = float(np.abs(uvw[usable, :2]).max()) if usable.any() else 1.0
        cell = 1.0 / (4.0 * uvmax)
    else:
        cell = cell_arcsec * ARCSEC
    return ImageGeometry(npix, npix, cell, cell)


def make_images(vs: VisibilitySet, device: torch.device, *, npix: int = 512,
                cell_arcsec: float | None = None, weighting: str = "natural", robust: float = 0.0,
                epsilon: float = DEFAULT_EPSILON, psf_epsilon: float | None = None, do_w: bool = True,
                niter: int = 1000, gain: float = 0.1,
                threshold_sigma: float = 3.0, major_gain: float = 0.8, max_major_cycles: int = 20,
                auto_mask: float = 5.0, progress=None) -> ImagingResult:
    """Dirty image, PSF, CLEAN and restored image of a visibility set (Stokes I).

    CLEAN is Cotton-Schwab (:mod:`.deconvolution`): Högbom minor cycles against a
    PSF twice the image's size, major cycles that subtract the model from the
    visibilities, a threshold of ``threshold_sigma`` times the noise, and an optional
    auto-mask at ``auto_mask`` σ. ``extras`` carries the noise: ``thermal_noise_jy``
    (a unit-weight sample, and ``noise_method``, the estimator), the expected
    thermal image noise ``expected_image_noise_jy_beam`` and ``image_rms_jy_beam``,
    the robust σ measured in the residual (the dirty image without CLEAN). With CLEAN the
    PSF is gridded at ``psf_epsilon``, by default the coarser of ``epsilon`` and
    :data:`PSF_EPSILON`; without, in the dirty image's spreading pass, at the finer. The
    noise estimate runs on a thread beside the gridding (its compiled loops and numpy's
    release the GIL), on the core the gridding's serial steps leave idle. Without CLEAN,
    so does the dirty image's robust σ, beside the beam fit.
    """
    _import_in_background("astropy.io.fits", "astropy.wcs")  # for write_fits, after the imaging
    stokes = vs.stokes_i()  # once, for the rows and the noise estimate
    uvw, vis, stat_weight = visibility_rows(vs, stokes)
    usable = stat_weight > 0
    geom = choose_geometry(uvw, usable, npix, cell_arcsec)
    wgt = imaging_weights(uvw, stat_weight, geom, weighting, robust)
    wsum = float(wgt.sum())
    if wsum <= 0:
        raise ValueError("no unflagged visibilities to image")
    report = (lambda frac: progress(frac)) if progress else (lambda frac: None)
    from cosmic_horizons_lab.science.detection import robust_sigma

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="noise")
    noise_future = pool.submit(visibility_noise, vs, stokes)  # of a unit-weight sample
    psf_eps = max(epsilon, PSF_EPSILON) if psf_epsilon is None else psf_epsilon
    if niter <= 0:
        # Without CLEAN only a PSF of the image's own size is wanted: the same pixels (the sum
        # is evaluated at each pixel's l, m whatever the image's size) on the same grid, so
        # one spreading pass makes both. One pass takes one kernel, the finer accuracy's:
        # measured at 2.6e6 visibilities, as much CPU as two passes at ε and PSF_EPSILON
        # (-5 % at 512², +1 % at 2048²), and the PSF is then as accurate as the image.
        big = geom
        dirty, psf_full = (im / wsum for im in dirty_images(
            uvw, [vis, np.ones_like(vis)], wgt, geom, device, epsilon=min(epsilon, psf_eps),
            do_w=do_w, progress=lambda d, t: report(0.6 * d / t)))
        # without CLEAN the residual is the dirty image: its σ beside the beam fit
        rms_future = pool.submit(robust_sigma, dirty)
        pool.shutdown(wait=False)
    else:
        dirty = dirty_image(uvw, vis, wgt, geom, device, epsilon=epsilon, do_w=do_w,
                            progress=lambda d, t: report(0.3 * d / t)) / wsum
        rms_future = None
        pool.shutdown(wait=False)
        # the PSF at twice the image's size: CLEAN subtracts a whole PSF from any pixel
        big = ImageGeometry(2 * geom.npix_x, 2 * geom.npix_y, geom.cell_x, geom.cell_y)
        psf_full = dirty_image(uvw, np.ones_like(vis), wgt, big, device, epsilon=psf_eps,
                               do_w=do_w, progress=lambda d, t: report(0.3 + 0.3 * d / t)) / wsum
    oy, ox = big.npix_y // 2 - geom.npix_y // 2, big.npix_x // 2 - geom.npix_x // 2
    psf = psf_full[oy:oy + geom.npix_y, ox:ox + geom.npix_x]
    beam = fit_beam(psf)
    noise = noise_future.result()  # σ² of a sample is noise² / weight
    expected = image_noise(noise.sigma, wgt, stat_weight)
    clean = restored = None
    if niter > 0:
        clean = cotton_schwab(dirty, psf_full, device, uvw_lambda=uvw, vis=vis, weight=wgt,
                              geom=geom, expected_noise=expected, gain=gain, niter=niter,
                              threshold_sigma=threshold_sigma, major_gain=major_gain,
                              max_major_cycles=max_major_cycles, auto_mask=auto_mask,
                              epsilon=epsilon, do_w=do_w,
                              progress=lambda frac: report(0.6 + 0.4 * frac))
        restored = restore(clean.model, clean.residual, beam)
    image_rms = rms_future.result() if rms_future is not None else \
        robust_sigma(clean.residual if clean is not None else dirty)
    report(1.0)
    return ImagingResult(geometry=geom, dirty=dirty, psf=psf, beam=beam, clean=clean,
                         restored=restored, n_visibilities=int(usable.sum()),
                         ref_freq=float(np.mean(vs.freqs)), phase_centre=vs.phase_centre,
                         extras={"thermal_noise_jy": noise.sigma, "noise_method": noise.method,
                                 "expected_image_noise_jy_beam": expected,
                                 "image_rms_jy_beam": image_rms})


def _import_in_background(*modules: str) -> None:
    """Import ``modules`` on a daemon thread, so their import overlaps the gridding instead
    of following it: astropy's FITS and WCS modules took ~1-2 s of a 2048² job's FITS
    writing in a fresh process. Python's import lock makes a later import wait for, and
    then reuse, this one."""
    import importlib
    import sys
    import threading

    missing = [m for m in modules if m not in sys.modules]
    if missing:
        threading.Thread(target=lambda: [importlib.import_module(m) for m in missing],
                         name="import-prefetch", daemon=True).start()


def image_wcs(geom: ImageGeometry, phase_centre: tuple[float, float], freq: float,
              ndim: int = 4) -> Any:
    """The celestial (+ frequency + Stokes) WCS of an image from :func:`make_images`."""
    from astropy.wcs import WCS

    w = WCS(naxis=ndim)
    ctype = ["RA---SIN", "DEC--SIN", "FREQ", "STOKES"][:ndim]
    w.wcs.ctype = ctype
    w.wcs.crval = [np.degrees(phase_centre[0]), np.degrees(phase_centre[1]), freq, 1.0][:ndim]
    w.wcs.cdelt = [-np.degrees(geom.cell_x), np.degrees(geom.cell_y), 1.0, 1.0][:ndim]
    # pixel npix//2 (0-based) is the phase centre; FITS counts from 1
    w.wcs.crpix = [geom.npix_x // 2 + 1, geom.npix_y // 2 + 1, 1.0, 1.0][:ndim]
    w.wcs.cunit = ["deg", "deg", "Hz", ""][:ndim]
    w.wcs.radesys = "FK5"
    w.wcs.equinox = 2000.0
    return w


def write_fits(path: str | Path, data: np.ndarray, result: ImagingResult, *, bunit: str = "JY/BEAM",
               extra: dict[str, Any] | None = None) -> Path:
    """One image plane as a 4-D FITS image (RA, Dec, FREQ, STOKES) with its WCS, beam and noise
    (``IMAGERMS``: the residual's robust σ; ``THERMRMS``: the expected thermal noise)."""
    from astropy.io import fits

    wcs = image_wcs(result.geometry, result.phase_centre, result.ref_freq)
    header = wcs.to_header()
    cell_deg = np.degrees(result.geometry.cell_x)
    header["BMAJ"] = result.beam.major * cell_deg
    header["BMIN"] = result.beam.minor * cell_deg
    header["BPA"] = np.degrees(result.beam.pa)
    header["BUNIT"] = bunit
    header["BTYPE"] = "Intensity"
    header["ORIGIN"] = "cosmic_horizons_lab"
    # the noise, as every image of the job reports it (Jy/beam)
    for key, name, comment in (("IMAGERMS", "image_rms_jy_beam", "robust sigma of the residual"),
                               ("THERMRMS", "expected_image_noise_jy_beam",
                                "expected thermal image noise")):
        value = result.extras.get(name)
        if value is not None and np.isfinite(value):
            header[key] = (float(value), comment)
    for k, v in (extra or {}).items():
        header[k] = v
    hdu = fits.PrimaryHDU(data=np.asarray(data, np.float32)[None, None], header=header)
    hdu.writeto(path, overwrite=True)
    return Path(path)
