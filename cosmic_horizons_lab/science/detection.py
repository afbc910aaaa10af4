"""Source finding and anomaly catalogues on images.

Sources are found as PyBDSF and Aegean find them. Each pixel is measured against a local
background and noise map (``science/background.py``: sigma-clipped statistics in boxes on
a coarse grid, interpolated), not one global σ: near a bright source the residual
sidelobes raise the local noise, and a global σ turns them into false sources. Islands
are connected pixels above ``island_sigma`` that hold a pixel above ``detect_sigma`` (the
two-threshold scheme); each island's sources are elliptical Gaussians fitted to its
pixels (``science/sourcefit.py``), which give sub-pixel positions and the integrated flux
(the Gaussian's volume over the beam's: the peak for a point source).

An anomaly is something the image has that was not expected: a source absent
from a reference catalogue, a catalogued source the image lacks, a flux
changed beyond a tolerance, or structure in a CLEAN residual above kσ. The match against
the reference is a KD-tree on the sphere (``science/crossmatch.py``).

``robust_sigma`` (one σ for a whole image, from the clipped MAD) stays for the callers
that want one number: CLEAN's stopping level and the images' ``image_rms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cosmic_horizons_lab.science.background import MAD_TO_SIGMA, clipped_stats

__all__ = ["MAD_TO_SIGMA", "Image", "anomalies", "anomaly_scores", "find_sources", "read_catalogue",
           "read_image", "robust_sigma"]


def robust_sigma(image: np.ndarray, clip: float = 5.0, iterations: int = 3) -> float:
    """Noise σ of an image from the MAD, iteratively clipping bright pixels."""
    return clipped_stats(np.asarray(image, float).ravel(), clip, iterations)[1]


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
                 sigma: float | None = None, box: int | None = None, step: int | None = None,
                 min_island_pixels: int | None = None) -> tuple[Any, float]:
    """Sources as an astropy Table (brightest first), and the image's median noise σ.

    Pixels are measured against the local background and noise maps
    (``science/background.py``; ``box``/``step`` in pixels, PyBDSF's ``rms_box``), or
    against one ``sigma`` and a zero background when it is given. An island is a
    connected region above ``island_sigma`` holding a pixel above ``detect_sigma``; its
    sources are Gaussians fitted to its pixels (``science/sourcefit.py``).

    An island must also cover ``min_island_pixels`` (default: a third of the beam's area,
    at least 6, as PyBDSF's ``minpix_isl``). Even a 5σ point source covers half a beam
    above the 3σ island threshold; what covers less is a spike of deconvolution error
    next to a bright source (a restored image of a noiseless field at a dynamic range of
    10⁴ has them at 5–7σ), or a noise peak narrower than the beam, and no Gaussian of
    the beam's size can be fitted to it honestly.

    Columns: id, x, y (0-based pixels), ra_deg, dec_deg, peak_jy_beam, flux_jy (integrated:
    the fitted Gaussian's volume over the beam's), flux_island_jy (the island's sum over the
    beam area), snr (peak over the local σ), local_rms, maj_px, min_px (fitted FWHMs), pa_deg
    (from +x toward +y), island, npix (island pixels), n_gaussians (a source of several
    Gaussians is PyBDSF's code "M": position their flux-weighted centre, flux their sum; peak
    and shape the brightest one's), fitted (False: moments only).
    """
    import scipy.optimize  # noqa: F401  (loads scipy's own BLAS first, so the limit below reaches it)
    from threadpoolctl import threadpool_limits

    # Each island's fit is a small least-squares problem (hundreds of pixels, a few dozen
    # parameters): BLAS threads only fight over the cores there (an SVD of 400 × 36 takes
    # 40 ms with threads on a busy 2-core machine and 2 ms on one).
    with threadpool_limits(limits=1, user_api="blas"):
        return _find_sources(img, detect_sigma, island_sigma, sigma, box, step, min_island_pixels)


def _find_sources(img: Image, detect_sigma: float, island_sigma: float, sigma: float | None,
                  box: int | None, step: int | None, min_island_pixels: int | None) -> tuple[Any, float]:
    from astropy.table import Table
    from scipy import ndimage

    from cosmic_horizons_lab.science.background import noise_maps
    from cosmic_horizons_lab.science.sourcefit import FWHM_PER_SIGMA, fit_island, group, merged

    data = np.asarray(img.data, float)
    beam_fwhm_px = float(np.sqrt(img.beam_area_pixels * 4 * np.log(2) / np.pi))
    if sigma is None:
        maps = noise_maps(data, box=box, step=step, beam_fwhm_pixels=beam_fwhm_px)
        bkg, rms = maps.background, maps.rms
    else:
        bkg, rms = np.zeros_like(data), np.full_like(data, float(sigma))
    good = rms > 0
    s = float(np.median(rms[good])) if good.any() else 0.0
    if min_island_pixels is None:
        min_island_pixels = max(6, int(img.beam_area_pixels / 3.0))
    cols: dict[str, list] = {c: [] for c in _SOURCE_COLUMNS}
    if s > 0:
        signal = np.where(np.isfinite(data), data - bkg, 0.0)
        snr = np.where(good, signal / np.where(good, rms, 1.0), 0.0)
        labels, _ = ndimage.label(snr > island_sigma)
        pad = int(np.ceil(beam_fwhm_px))
        for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, data.shape[0])
            x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, data.shape[1])
            island = labels[y0:y1, x0:x1] == lab
            cut_snr = snr[y0:y1, x0:x1]
            if island.sum() < min_island_pixels or cut_snr[island].max() < detect_sigma:
                continue
            cut = signal[y0:y1, x0:x1]
            comps = fit_island(cut, island, rms[y0:y1, x0:x1], detect_sigma,
                               beam_fwhm_px / FWHM_PER_SIGMA, img.beam_area_pixels, offset=(y0, x0))
            isl_flux = float(cut[island].sum() / img.beam_area_pixels)
            sources = [(merged(g), len(g)) for g in group(comps)]
            for c, n_gauss in sources:
                iy = int(np.clip(round(c.y), 0, data.shape[0] - 1))
                ix = int(np.clip(round(c.x), 0, data.shape[1] - 1))
                local = float(rms[iy, ix]) if rms[iy, ix] > 0 else s
                for key, val in (("x", c.x), ("y", c.y), ("peak_jy_beam", c.peak), ("flux_jy", c.flux),
                                 ("flux_island_jy", isl_flux / len(sources)), ("snr", c.peak / local),
                                 ("local_rms", local), ("maj_px", c.sigma_major * FWHM_PER_SIGMA),
                                 ("min_px", c.sigma_minor * FWHM_PER_SIGMA),
                                 ("pa_deg", float(np.degrees(c.theta))), ("island", lab),
                                 ("npix", int(island.sum())), ("n_gaussians", n_gauss),
                                 ("fitted", c.fitted)):
                    cols[key].append(val)
    order = np.argsort(-np.asarray(cols["peak_jy_beam"], float), kind="stable")
    table = Table()
    table["id"] = np.arange(1, len(order) + 1, dtype=int)
    for c, dtype in _SOURCE_COLUMNS.items():
        table[c] = np.asarray(cols[c], dtype)[order] if len(order) else np.zeros(0, dtype)
        if c == "y":
            ra, dec = img.wcs.pixel_to_world_values(table["x"], table["y"]) if len(order) \
                else (np.zeros(0), np.zeros(0))
            table["ra_deg"] = np.asarray(ra, float)
            table["dec_deg"] = np.asarray(dec, float)
    table.meta["noise_jy_beam"] = s
    table.meta["detect_sigma"] = detect_sigma
    table.meta["island_sigma"] = island_sigma
    return table, s


_SOURCE_COLUMNS = {"x": float, "y": float, "peak_jy_beam": float, "flux_jy": float,
                   "flux_island_jy": float, "snr": float, "local_rms": float, "maj_px": float,
                   "min_px": float, "pa_deg": float, "island": int, "npix": int, "n_gaussians": int,
                   "fitted": bool}


def anomalies(sources: Any, reference: Any | None, *, match_radius_deg: float,
              flux_tolerance: float = 0.2, residual: Image | None = None,
              residual_sigma: float = 5.0, footprint: Image | None = None,
              min_flux_jy: float | None = None) -> Any:
    """The anomaly catalogue (astropy Table): kind, ra_deg, dec_deg, flux_jy, detail.

    Kinds: ``new_source`` (found, not in the reference), ``missing_source``
    (in the reference, not found), ``flux_change`` (matched, flux off by more
    than ``flux_tolerance``), ``residual_structure`` (residual island above
    ``residual_sigma``·σ). Without a reference, every source is new.

    A reference source counts as missing only where it could have been found: inside
    ``footprint`` (the image, when given: an all-sky reference is not 1.8 million missing
    sources) and, when its flux is known, at ``min_flux_jy`` or more. Matching is a KD-tree
    on the sphere (``science/crossmatch.py``), and the table is built column by column.
    """
    from astropy.table import Table

    from cosmic_horizons_lab.science.crossmatch import nearest

    ra, dec, flux = (np.asarray(sources[c], float) for c in ("ra_deg", "dec_deg", "flux_jy"))
    parts: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, list[str] | str]] = []
    if reference is None or len(reference) == 0:
        parts.append(("new_source", ra, dec, flux, "no reference catalogue"))
    else:
        rra = np.asarray(reference["ra_deg"], float)
        rdec = np.asarray(reference["dec_deg"], float)
        rflux = np.asarray(reference["flux_jy"], float) if "flux_jy" in reference.colnames \
            else np.full(len(rra), np.nan)
        found = nearest(ra, dec, rra, rdec, match_radius_deg)
        j = found.index
        matched = found.matched
        ref_f = np.where(matched, rflux[np.where(matched, j, 0)], np.nan) if len(rflux) else \
            np.full(len(ra), np.nan)
        changed = matched & np.isfinite(ref_f) & (np.abs(flux - ref_f) > flux_tolerance * np.abs(ref_f))
        kind = np.where(~matched, "new_source", np.where(changed, "flux_change", ""))
        keep = kind != ""
        detail = ["not in the reference catalogue" if k == "new_source"
                  else f"reference {rf:.4g} Jy, measured {f:.4g} Jy"
                  for k, rf, f in zip(kind[keep], ref_f[keep], flux[keep])]
        parts.append((kind[keep], ra[keep], dec[keep], flux[keep], detail))
        cand = _expected_rows(rra, rdec, rflux, footprint, min_flux_jy, match_radius_deg)
        back = nearest(rra[cand], rdec[cand], ra, dec, match_radius_deg)
        miss = cand[~back.matched]
        parts.append(("missing_source", rra[miss], rdec[miss], rflux[miss], "catalogued, not detected"))
    if residual is not None:
        res_sources, _ = find_sources(residual, detect_sigma=residual_sigma,
                                      island_sigma=min(3.0, residual_sigma))
        parts.append(("residual_structure", np.asarray(res_sources["ra_deg"], float),
                      np.asarray(res_sources["dec_deg"], float), np.asarray(res_sources["flux_jy"], float),
                      [f"residual peak {v:.1f} sigma" for v in res_sources["snr"]]))
    cols: dict[str, list] = {"kind": [], "ra_deg": [], "dec_deg": [], "flux_jy": [], "detail": []}
    for kind, pra, pdec, pflux, detail in parts:
        n = len(pra)
        cols["kind"].append(np.broadcast_to(np.asarray(kind, dtype=object), (n,)))
        cols["ra_deg"].append(pra)
        cols["dec_deg"].append(pdec)
        cols["flux_jy"].append(pflux)
        cols["detail"].append(np.broadcast_to(np.asarray(detail, dtype=object), (n,)))
    out = Table()
    for name, chunks in cols.items():
        joined = np.concatenate(chunks) if chunks else np.zeros(0)
        out[name] = joined.astype(str) if name in ("kind", "detail") else joined.astype(float)
    return out


def anomaly_scores(sources: Any, reference: Any | None, *, match_radius_deg: float,
                   beam_area_pixels: float | None = None) -> np.ndarray:
    """Each source's anomaly score, one per row of the source table (its ``anomaly_score`` column).

    How far the source departs from what the reference expects there, in units of its flux's
    noise: ``|S − S_ref| / σ``, where ``S`` is its integrated flux (``flux_jy``), ``S_ref`` the
    flux of the reference source it matches within ``match_radius_deg`` (the same KD-tree match
    as :func:`anomalies`), or 0 where it matches none, and ``σ`` the local noise at the source
    (``local_rms``: a point source's flux error), scaled for a resolved source by
    ``sqrt(maj·min / beam²)`` when ``beam_area_pixels`` is given (an integral over more beams
    holds more noise; Condon 1997), never below the point source's. A new source's score is thus its own
    significance, a flux change's the change's; a match of unknown reference flux scores 0.
    Without a reference every source is new. The anomaly catalogue's kinds stay the verdicts
    (thresholds); the score ranks every source, for a map's row beside its flux and SNR.
    """
    from cosmic_horizons_lab.science.crossmatch import nearest

    flux = np.asarray(sources["flux_jy"], float)
    noise = np.asarray(sources["local_rms"], float) if "local_rms" in sources.colnames \
        else np.full(len(flux), float(sources.meta.get("noise_jy_beam", np.nan)))
    if beam_area_pixels and {"maj_px", "min_px"} <= set(sources.colnames):
        beam_fwhm_sq = beam_area_pixels * 4 * np.log(2) / np.pi
        size = np.asarray(sources["maj_px"], float) * np.asarray(sources["min_px"], float) / beam_fwhm_sq
        noise = noise * np.sqrt(np.maximum(np.nan_to_num(size, nan=1.0), 1.0))
    expected = np.zeros(len(flux))
    if reference is not None and len(reference) and len(flux):
        rflux = np.asarray(reference["flux_jy"], float) if "flux_jy" in reference.colnames \
            else np.full(len(reference), np.nan)
        found = nearest(np.asarray(sources["ra_deg"], float), np.asarray(sources["dec_deg"], float),
                        np.asarray(reference["ra_deg"], float), np.asarray(reference["dec_deg"], float),
                        match_radius_deg)
        ref = rflux[np.where(found.matched, found.index, 0)]
        # matched, flux unknown: nothing to depart from
        expected = np.where(found.matched, np.where(np.isfinite(ref), ref, flux), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(noise > 0, np.abs(flux - expected) / noise, np.nan)


def _expected_rows(rra: np.ndarray, rdec: np.ndarray, rflux: np.ndarray, footprint: Image | None,
                   min_flux_jy: float | None, margin_deg: float) -> np.ndarray:
    """Rows of the reference that the image should show: inside its footprint (a cap cut,
    then its pixels) and bright enough, where the flux is known."""
    from cosmic_horizons_lab.science.crossmatch import Cap, unit_vectors

    def bright(rows: np.ndarray) -> np.ndarray:
        if min_flux_jy is None:
            return rows
        f = rflux[rows]
        return rows[~(np.isfinite(f) & (f < min_flux_jy))]

    if footprint is None:
        return bright(np.arange(len(rra)))
    ny, nx = footprint.data.shape
    xs = np.array([-0.5, nx - 0.5, -0.5, nx - 0.5, (nx - 1) / 2])
    ys = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5, (ny - 1) / 2])
    cra, cdec = footprint.wcs.pixel_to_world_values(xs, ys)
    corners = unit_vectors(np.asarray(cra), np.asarray(cdec))
    corners = corners[np.isfinite(corners).all(axis=1)]
    rows = np.flatnonzero(Cap.around(corners, margin_deg).contains(rra, rdec)) if len(corners) \
        else np.arange(len(rra))
    rows = bright(rows)
    if rows.size == 0:
        return rows
    px, py = footprint.wcs.world_to_pixel_values(rra[rows], rdec[rows])
    px, py = np.asarray(px, float), np.asarray(py, float)
    inside = (px >= -0.5) & (px < nx - 0.5) & (py >= -0.5) & (py < ny - 0.5)
    return rows[inside]


def read_catalogue(path: str | Path) -> Any:
    """A reference catalogue with ra_deg, dec_deg and optional flux_jy: ECSV, CSV, FITS,
    VOTable, or NumPy (``.npz`` of columns, a structured ``.npy``).

    Column readers only, never a loop over rows: an NVSS-sized catalogue (1.8 million
    rows) reads in well under a second from FITS or NumPy; CSV goes through astropy's C
    reader with its fast float converter and takes a few seconds."""
    from astropy.table import Table

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":  # one array per column
        with np.load(p, allow_pickle=False) as arrays:
            return Table({k: arrays[k] for k in arrays.files})
    if suffix == ".npy":  # a structured array
        return Table(np.load(p, allow_pickle=False))
    if suffix in (".csv", ".ecsv"):
        fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}[suffix]
        if suffix == ".csv":
            return Table.read(p, format=fmt, fast_reader={"use_fast_converter": True})
        return Table.read(p, format=fmt)
    return Table.read(p)
