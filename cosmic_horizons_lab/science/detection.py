"""Source finding and anomaly catalogues on images.

The noise is estimated robustly (median absolute deviation after clipping),
because an image with bright sources has a standard deviation dominated by
them. Sources are islands: connected pixels above ``island_sigma``·σ that
contain a peak above ``detect_sigma``·σ (the two-threshold scheme of
PyBDSF/Aegean). Each island is measured by its peak, its flux-weighted
centroid (sub-pixel position) and its integrated flux (sum over the island,
grown by a beam width to take in the wings, divided by the beam area in pixels).

An anomaly is something the image has that was not expected: a source absent
from a reference catalogue, a catalogued source the image lacks, a flux
changed beyond a tolerance, or structure in a CLEAN residual above kσ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAD_TO_SIGMA = 1.4826


def robust_sigma(image: np.ndarray, clip: float = 5.0, iterations: int = 3) -> float:
    """Noise σ of an image from the MAD, iteratively clipping bright pixels."""
    vals = np.asarray(image, float)
    vals = vals[np.isfinite(vals)].ravel()
    if vals.size == 0:
        return 0.0
    sigma = 0.0
    for _ in range(iterations):
        med = np.median(vals)
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(vals - med)))
        if sigma == 0:
            break
        kept = vals[np.abs(vals - med) < clip * sigma]
        if kept.size == vals.size or kept.size < 16:
            break
        vals = kept
    return sigma


@dataclass
class Image:
    """A 2-D image plane with its celestial WCS and beam (pixels)."""

    data: np.ndarray  # [y, x]
    wcs: Any  # astropy.wcs.WCS, celestial
    beam_area_pixels: float
    beam_fwhm_deg: float
    header: Any


def read_image(path: str | Path) -> Image:
    """The first plane of a FITS image (any number of degenerate axes)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(path) as hdul:
        header = hdul[0].header
        data = np.asarray(hdul[0].data, float)
    while data.ndim > 2:
        data = data[0]
    wcs = WCS(header).celestial
    scale = np.abs(wcs.proj_plane_pixel_scales()[0].to_value("deg"))
    bmaj, bmin = header.get("BMAJ"), header.get("BMIN")
    if bmaj and bmin:
        area = float(np.pi * (bmaj / scale) * (bmin / scale) / (4 * np.log(2)))
        fwhm = float(np.sqrt(bmaj * bmin))
    else:
        area, fwhm = 1.0, float(scale)
    return Image(data=data, wcs=wcs, beam_area_pixels=area, beam_fwhm_deg=fwhm, header=header)


def find_sources(img: Image, *, detect_sigma: float = 5.0, island_sigma: float = 3.0,
                 sigma: float | None = None) -> tuple[Any, float]:
    """Islands of emission as an astropy Table, and the noise σ used.

    Columns: id, x, y (0-based pixels, flux-weighted centroid), ra_deg, dec_deg,
    peak_jy_beam, flux_jy (integrated), snr, npix.
    """
    from astropy.table import Table
    from scipy import ndimage

    data = img.data
    s = robust_sigma(data) if sigma is None else sigma
    table = Table(names=["id", "x", "y", "ra_deg", "dec_deg", "peak_jy_beam", "flux_jy", "snr", "npix"],
                  dtype=[int, float, float, float, float, float, float, float, int])
    if s <= 0:
        return table, s
    labels, n = ndimage.label(data > island_sigma * s)
    if n == 0:
        return table, s
    idx = np.arange(1, n + 1)
    peaks = ndimage.maximum(data, labels, idx)
    # An island cut at island_sigma misses the wings of its source (a tenth of a point
    # source's flux when the cut is at a tenth of its peak): integrate over the island
    # grown by a beam width, where the wings are.
    grow = max(3, int(2 * np.ceil(img.beam_area_pixels ** 0.5)) + 1)
    grown = ndimage.grey_dilation(labels, size=(grow, grow))
    grown = np.where(labels > 0, labels, grown)
    sums = ndimage.sum(data, grown, idx)
    sizes = ndimage.sum(np.ones_like(data), labels, idx)
    cy, cx = np.asarray(ndimage.center_of_mass(np.clip(data, 0, None), labels, idx)).T
    keep = peaks > detect_sigma * s
    ra, dec = img.wcs.pixel_to_world_values(cx[keep], cy[keep])
    order = np.argsort(-peaks[keep])
    for k, j in enumerate(order):
        table.add_row([k + 1, cx[keep][j], cy[keep][j], float(np.asarray(ra)[j]),
                       float(np.asarray(dec)[j]), peaks[keep][j],
                       sums[keep][j] / img.beam_area_pixels, peaks[keep][j] / s, int(sizes[keep][j])])
    table.meta["noise_jy_beam"] = s
    table.meta["detect_sigma"] = detect_sigma
    return table, s


def _separation_deg(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray) -> np.ndarray:
    """Angular separations (deg) between every pair, by the haversine formula: (n1, n2)."""
    r1, d1, r2, d2 = (np.radians(np.asarray(a, float)) for a in (ra1, dec1, ra2, dec2))
    dra = r1[:, None] - r2[None, :]
    ddec = d1[:, None] - d2[None, :]
    h = np.sin(ddec / 2) ** 2 + np.cos(d1)[:, None] * np.cos(d2)[None, :] * np.sin(dra / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def anomalies(sources: Any, reference: Any | None, *, match_radius_deg: float,
              flux_tolerance: float = 0.2, residual: Image | None = None,
              residual_sigma: float = 5.0) -> Any:
    """The anomaly catalogue (astropy Table): kind, ra_deg, dec_deg, flux_jy, detail.

    Kinds: ``new_source`` (found, not in the reference), ``missing_source``
    (in the reference, not found), ``flux_change`` (matched, flux off by more
    than ``flux_tolerance``), ``residual_structure`` (residual island above
    ``residual_sigma``·σ). Without a reference, every source is new.
    """
    from astropy.table import Table

    out = Table(names=["kind", "ra_deg", "dec_deg", "flux_jy", "detail"],
                dtype=[str, float, float, float, str])
    ra, dec, flux = (np.asarray(sources[c], float) for c in ("ra_deg", "dec_deg", "flux_jy"))
    if reference is None or len(reference) == 0:
        for i in range(len(sources)):
            out.add_row(["new_source", ra[i], dec[i], flux[i], "no reference catalogue"])
    else:
        rra = np.asarray(reference["ra_deg"], float)
        rdec = np.asarray(reference["dec_deg"], float)
        rflux = np.asarray(reference["flux_jy"], float) if "flux_jy" in reference.colnames \
            else np.full(len(reference), np.nan)
        sep = _separation_deg(ra, dec, rra, rdec) if len(ra) else np.zeros((0, len(rra)))
        for i in range(len(ra)):
            j = int(np.argmin(sep[i])) if sep.shape[1] else -1
            if j < 0 or sep[i, j] > match_radius_deg:
                out.add_row(["new_source", ra[i], dec[i], flux[i], "not in the reference catalogue"])
            elif np.isfinite(rflux[j]) and abs(flux[i] - rflux[j]) > flux_tolerance * abs(rflux[j]):
                out.add_row(["flux_change", ra[i], dec[i], flux[i],
                             f"reference {rflux[j]:.4g} Jy, measured {flux[i]:.4g} Jy"])
        for j in range(len(rra)):
            if sep.shape[0] == 0 or sep[:, j].min() > match_radius_deg:
                out.add_row(["missing_source", rra[j], rdec[j], rflux[j], "catalogued, not detected"])
    if residual is not None:
        res_sources, s = find_sources(residual, detect_sigma=residual_sigma,
                                      island_sigma=min(3.0, residual_sigma))
        for row in res_sources:
            out.add_row(["residual_structure", row["ra_deg"], row["dec_deg"], row["flux_jy"],
                         f"residual peak {row['snr']:.1f} sigma"])
    return out


def read_catalogue(path: str | Path) -> Any:
    """A reference catalogue (ECSV, CSV, FITS, VOTable) with ra_deg, dec_deg and optional flux_jy."""
    from astropy.table import Table

    p = Path(path)
    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(p.suffix.lower())
    return Table.read(p, format=fmt) if fmt else Table.read(p)
