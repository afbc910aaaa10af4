"""Local background and noise maps of an image, as PyBDSF's ``rms_box`` and BANE make them.

One global σ is wrong twice over in a radio image: near a bright source the residual
sidelobes of imperfect deconvolution raise the local noise (a global σ then turns them into
false sources), and toward the edges and in quiet regions the noise differs again. The maps
here are the standard remedy: sigma-clipped statistics in boxes of ``box`` pixels on a
coarse grid of step ``step``, median-filtered across neighbouring boxes (one box swamped by
a bright source does not make a hole or a spike), and interpolated bilinearly back to every
pixel.

The box must hold many beams (the noise is correlated over a beam, so a box of ``n`` beams
gives σ to about ``1/sqrt(2n)``) yet be small against the scale on which the noise
changes. The default follows PyBDSF and BANE: about 10 beam widths, stepped by a third of
that, never below 32 pixels or above the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826


@dataclass
class NoiseMaps:
    """Per-pixel background (mean level) and noise σ, both in the image's units."""

    background: np.ndarray
    rms: np.ndarray
    box: int
    step: int
    constant_background: bool = False  # the map varied no more than its sampling error
    constant_rms: bool = False


def default_box(shape: tuple[int, ...], beam_fwhm_pixels: float) -> tuple[int, int]:
    """(box, step) in pixels: ~10 beam FWHMs, step a third of that, bounded by the image.

    The step grows on large images so that the grid stays within 64 × 64 boxes (a 4096²
    image then costs seconds, not minutes); the box, which sets what the map resolves,
    does not change."""
    n = min(shape)
    box = round(10 * max(beam_fwhm_pixels, 1.0))
    box = max(32, min(box, n))
    step = max(1, box // 3, int(np.ceil(max(shape) / 64)))
    return box, step


def clipped_stats(values: np.ndarray, clip: float = 3.0, iterations: int = 5) -> tuple[float, float]:
    """Median and σ (from the MAD) of ``values`` after iterative ``clip``·σ clipping.

    The MAD, not the standard deviation, because a box that holds part of a bright source
    would otherwise report the source as noise.
    """
    vals = values[np.isfinite(values)]  # a copy: the medians below may reorder it
    if vals.size == 0:
        return 0.0, 0.0
    if iterations <= 0:
        return float(np.median(vals)), 0.0
    med, sigma = 0.0, 0.0
    for _ in range(iterations):
        # in place (partitioning reorders, never changes, the values): no copy per median
        med = float(np.median(vals, overwrite_input=True))
        dev = np.abs(vals - med)
        sigma = MAD_TO_SIGMA * float(np.median(dev, overwrite_input=True))
        if sigma == 0:
            break
        # dev was reordered by its median: recompute which values to keep
        kept = vals[np.abs(vals - med) < clip * sigma]
        if kept.size == vals.size or kept.size < 16:
            break
        vals = kept
    return med, sigma


def noise_maps(data: np.ndarray, *, box: int | None = None, step: int | None = None,
               beam_fwhm_pixels: float = 3.0, clip: float = 3.0, adaptive: bool = True) -> NoiseMaps:
    """Background and noise maps of a 2-D image (``[y, x]``), NaNs ignored.

    ``box``/``step`` default to :func:`default_box`. The box centres sit on a grid that
    starts at the image's first pixel and ends at its last, so every pixel lies between
    grid points (no extrapolation).

    With ``adaptive`` (PyBDSF's ``rms_map``/``mean_map`` left to decide), a map whose
    variation across the boxes is no more than each box's own sampling error would give
    is replaced by its image-wide value: a map of pure sampling noise would only add that
    noise to every flux. The noise map is kept when its boxes scatter by more than 1.5×
    the error of a σ from one box (``σ / sqrt(2 n)``, ``n`` the beams in a box), the
    background when they scatter by more than 3× the error of a median (``1.25 σ / sqrt(n)``).
    """
    from scipy import ndimage

    img = np.asarray(data, float)
    ny, nx = img.shape
    dbox, dstep = default_box(img.shape, beam_fwhm_pixels)
    box = dbox if box is None else max(4, min(int(box), ny, nx))
    step = dstep if step is None else max(1, int(step))
    cy = _centres(ny, step)
    cx = _centres(nx, step)
    bkg = np.zeros((cy.size, cx.size))
    rms = np.zeros((cy.size, cx.size))
    half = box // 2
    for i, y in enumerate(cy):
        y0 = int(min(max(round(y) - half, 0), ny - box))
        for j, x in enumerate(cx):
            x0 = int(min(max(round(x) - half, 0), nx - box))
            bkg[i, j], rms[i, j] = clipped_stats(img[y0:y0 + box, x0:x0 + box].ravel(), clip)
    good = rms > 0
    if not good.all():  # boxes of blanked pixels take the median of the others
        fill = float(np.median(rms[good])) if good.any() else 0.0
        rms[~good] = fill
        bkg[~good] = float(np.median(bkg[good])) if good.any() else 0.0
    if min(bkg.shape) >= 3:
        bkg = ndimage.median_filter(bkg, size=3, mode="nearest")
        rms = ndimage.median_filter(rms, size=3, mode="nearest")
    constant_bkg = constant_rms = False
    if adaptive and rms.size > 1:
        level, sigma = clipped_stats(img.ravel(), clip)
        beams = box * box / (1.1331 * max(beam_fwhm_pixels, 1.0) ** 2)
        if float(np.std(rms)) <= 1.5 * sigma / np.sqrt(2 * beams):
            rms, constant_rms = np.full_like(rms, sigma), True
        if float(np.std(bkg)) <= 3 * 1.25 * sigma / np.sqrt(beams):
            bkg, constant_bkg = np.full_like(bkg, level), True
    return NoiseMaps(background=_upsample(bkg, cy, cx, ny, nx), rms=_upsample(rms, cy, cx, ny, nx),
                     box=box, step=step, constant_background=constant_bkg, constant_rms=constant_rms)


def _centres(n: int, step: int) -> np.ndarray:
    """Grid points from 0 to n - 1, about ``step`` apart, both ends included."""
    k = max(2, int(np.ceil((n - 1) / step)) + 1)
    return np.linspace(0.0, n - 1.0, k)


def _upsample(grid: np.ndarray, cy: np.ndarray, cx: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Bilinear interpolation of the coarse grid to every pixel."""
    from scipy.interpolate import RegularGridInterpolator

    f = RegularGridInterpolator((cy, cx), grid, method="linear", bounds_error=False, fill_value=None)
    yy, xx = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    return f(np.stack([yy.ravel(), xx.ravel()], axis=-1)).reshape(ny, nx)
