"""Elliptical Gaussian fits to the pixels of an island, as PyBDSF and Aegean measure sources.

A restored point source is the restoring beam, a Gaussian, so a Gaussian fitted to its
island gives its position to a small fraction of a pixel and its flux from the fitted
volume: ``S = A · 2π σ₁σ₂ / Ω_beam`` (``Ω_beam`` the beam area in pixels), which is the
peak for an unresolved source and the integrated flux for a resolved one. The fit is
unweighted least squares over the island's pixels (the pixels above the island threshold),
as PyBDSF fits, so the two agree on the same image to well within the noise.

An island may hold more than one source: every local maximum above the detection
threshold, a beam or more from a brighter one, starts one Gaussian, and they are fitted
together. A fit that fails or lands outside the island falls back to moments (the
flux-weighted centroid and the island's sum over the beam area).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FWHM_PER_SIGMA = float(np.sqrt(8 * np.log(2)))


@dataclass
class Component:
    """One fitted Gaussian, in pixels (0-based ``x``, ``y``) and the image's units."""

    x: float
    y: float
    peak: float
    sigma_major: float
    sigma_minor: float
    theta: float  # radians, the major axis's angle from +x toward +y
    flux: float  # integrated: peak · 2π σ_maj σ_min / beam area
    fitted: bool  # False when the moments stand in for a failed fit


def gaussians(params: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """The sum of elliptical Gaussians ``params`` = [amp, x, y, sx, sy, theta] × n at (xx, yy)."""
    out = np.zeros_like(xx, dtype=float)
    for amp, x0, y0, sx, sy, th in np.reshape(params, (-1, 6)):
        c, s = np.cos(th), np.sin(th)
        dx, dy = xx - x0, yy - y0
        u = (c * dx + s * dy) / sx
        v = (-s * dx + c * dy) / sy
        out += amp * np.exp(-0.5 * (u * u + v * v))
    return out


def gaussians_jacobian(params: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """∂ :func:`gaussians` / ∂ params at (xx, yy): (pixels, 6n), analytic (a numerical one
    costs a model evaluation per parameter, and blends of several Gaussians have dozens)."""
    p = np.reshape(params, (-1, 6))
    out = np.empty((xx.size, p.size))
    for k, (amp, x0, y0, sx, sy, th) in enumerate(p):
        c, s = np.cos(th), np.sin(th)
        dx, dy = xx - x0, yy - y0
        u = (c * dx + s * dy) / sx
        v = (-s * dx + c * dy) / sy
        e = np.exp(-0.5 * (u * u + v * v))
        ae = amp * e
        out[:, 6 * k] = e
        out[:, 6 * k + 1] = ae * (u * c / sx - v * s / sy)
        out[:, 6 * k + 2] = ae * (u * s / sx + v * c / sy)
        out[:, 6 * k + 3] = ae * u * u / sx
        out[:, 6 * k + 4] = ae * v * v / sy
        out[:, 6 * k + 5] = -ae * u * v * (sy / sx - sx / sy)
    return out


def fit_island(data: np.ndarray, island: np.ndarray, noise: np.ndarray, detect_sigma: float,
               beam_sigma_pixels: float, beam_area_pixels: float, offset: tuple[int, int] = (0, 0),
               max_components: int = 8) -> list[Component]:
    """Gaussians fitted to ``data`` over the pixels where ``island`` is set.

    ``data`` (background subtracted), ``island`` and ``noise`` (local σ) are the island's
    cut-out; ``offset`` (y0, x0) places it in the image, and the components come back in
    image pixels. One Gaussian starts at the island's maximum; while the fit's residual
    has a pixel above ``detect_sigma``·σ a beam or more from every component, another
    starts there and all are refitted (PyBDSF's iterative fitting). A smooth extended
    source thus stays one component, and a blend of two becomes two.
    """
    yy, xx = np.nonzero(island)
    z = data[yy, xx]
    sig = noise[yy, xx]
    if z.size > 100 * beam_area_pixels:  # extended emission, not a blend of point sources:
        max_components = 1  # one Gaussian for its centre and scale (and the island's sum)
    if z.size > 20_000:  # a fit's cost grows with the pixels: a region this large gets moments
        return [moments(data, island, beam_sigma_pixels, beam_area_pixels, offset)]
    fwhm = beam_sigma_pixels * FWHM_PER_SIGMA
    k = int(np.argmax(z))
    starts = [(float(z[k]), float(xx[k]), float(yy[k]))]
    params = best = None
    while True:
        fitted = _fit(z, xx.astype(float), yy.astype(float), starts, params, beam_sigma_pixels,
                      data.shape)
        if fitted is None:
            break
        params = best = fitted
        if len(starts) >= max_components:
            break
        resid = (z - gaussians(params, xx.astype(float), yy.astype(float))) / sig
        order = np.argsort(-resid)
        new = None
        for j in order[:50]:
            if resid[j] < detect_sigma:
                break
            if all((xx[j] - p[1]) ** 2 + (yy[j] - p[2]) ** 2 >= fwhm ** 2 for p in params.reshape(-1, 6)):
                new = j
                break
        if new is None:
            break
        starts = [(float(p[0]), float(p[1]), float(p[2])) for p in params.reshape(-1, 6)]
        starts.append((float(z[new] - gaussians(params, xx[new:new + 1].astype(float),
                                                yy[new:new + 1].astype(float))[0]),
                       float(xx[new]), float(yy[new])))
        params = np.concatenate([params, [starts[-1][0], starts[-1][1], starts[-1][2],
                                          beam_sigma_pixels, beam_sigma_pixels, 0.0]])
    if best is None:
        return [moments(data, island, beam_sigma_pixels, beam_area_pixels, offset)]
    comps = []
    for amp, x0, y0, sx, sy, th in best.reshape(-1, 6):
        if sy > sx:  # the major axis first
            sx, sy, th = sy, sx, th + np.pi / 2
        th = (th + np.pi / 2) % np.pi - np.pi / 2
        comps.append(Component(x=float(x0) + offset[1], y=float(y0) + offset[0], peak=float(amp),
                               sigma_major=float(sx), sigma_minor=float(sy), theta=float(th),
                               flux=float(amp * 2 * np.pi * sx * sy / beam_area_pixels), fitted=True))
    return comps


def _fit(z: np.ndarray, xf: np.ndarray, yf: np.ndarray, starts: list[tuple[float, float, float]],
         previous: np.ndarray | None, s0: float, shape: tuple[int, int]) -> np.ndarray | None:
    """Least-squares Gaussians (one per start, or from ``previous``), or None when the fit
    fails or a component leaves the island's pixels."""
    from scipy.optimize import least_squares

    s0 = max(s0, 0.5)
    ny, nx = shape
    big = float(max(nx, ny, 2 * s0))
    lo, hi = [], []
    for amp, _, _ in starts:
        lo += [0.0, -0.5, -0.5, 0.3 * s0, 0.3 * s0, -2 * np.pi]
        hi += [np.inf, nx - 0.5, ny - 0.5, big, big, 2 * np.pi]
    p0 = previous if previous is not None else np.array(
        [v for amp, x, y in starts for v in (max(amp, 1e-12), x, y, s0, s0, 0.0)], float)
    lo_a, hi_a = np.asarray(lo), np.asarray(hi)
    p0 = np.clip(p0, lo_a + 1e-9, hi_a - 1e-9)
    if z.size < p0.size:
        return None
    try:
        fit = least_squares(lambda p: gaussians(p, xf, yf) - z, p0,
                            jac=lambda p: gaussians_jacobian(p, xf, yf), bounds=(lo_a, hi_a),
                            method="trf", x_scale="jac", max_nfev=50 * p0.size)
    except (ValueError, np.linalg.LinAlgError):
        return None
    params = fit.x
    if not (fit.status > 0 and np.isfinite(params).all()):
        return None
    pix = set(zip(np.round(yf).astype(int).tolist(), np.round(xf).astype(int).tolist()))
    for amp, x0, y0, *_ in params.reshape(-1, 6):
        if amp <= 0 or (round(y0), round(x0)) not in pix:
            return None
    return params


def group(comps: list[Component]) -> list[list[Component]]:
    """Components of one island grouped into sources, as PyBDSF groups its Gaussians.

    Two components belong to one source when the sum of their Gaussians does not dip
    between them below half the fainter one's peak: a bright source whose shape a single
    Gaussian does not quite match (a residual CLEAN error, a source at the edge of a
    wide-field image) is one source of two Gaussians, not two sources.
    """
    n = len(comps)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    t = np.linspace(0.0, 1.0, 25)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = comps[i], comps[j]
            xs, ys = a.x + t * (b.x - a.x), a.y + t * (b.y - a.y)
            line = sum(gaussians(np.array([c.peak, c.x, c.y, c.sigma_major, c.sigma_minor, c.theta]), xs, ys)
                       for c in (a, b))
            if line.min() >= 0.5 * min(a.peak, b.peak):
                parent[root(j)] = root(i)
    groups: dict[int, list[Component]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(comps[i])
    return list(groups.values())


def merged(comps: list[Component]) -> Component:
    """One source from its components: the flux-weighted centre (the first moment of the
    sum of Gaussians), the summed flux, the brightest component's peak and shape."""
    if len(comps) == 1:
        return comps[0]
    flux = np.array([c.flux for c in comps])
    w = flux / flux.sum() if flux.sum() > 0 else np.full(len(comps), 1.0 / len(comps))
    main = max(comps, key=lambda c: c.peak)
    return Component(x=float(sum(wi * c.x for wi, c in zip(w, comps))),
                     y=float(sum(wi * c.y for wi, c in zip(w, comps))), peak=main.peak,
                     sigma_major=main.sigma_major, sigma_minor=main.sigma_minor, theta=main.theta,
                     flux=float(flux.sum()), fitted=all(c.fitted for c in comps))


def moments(data: np.ndarray, island: np.ndarray, beam_sigma_pixels: float, beam_area_pixels: float,
            offset: tuple[int, int] = (0, 0)) -> Component:
    """The island's flux-weighted centroid, maximum and sum over the beam area."""
    w = np.where(island, np.clip(data, 0, None), 0.0)
    total = float(w.sum())
    yy, xx = np.indices(data.shape)
    if total <= 0:
        y, x = np.unravel_index(int(np.argmax(np.where(island, data, -np.inf))), data.shape)
        cx, cy = float(x), float(y)
    else:
        cx, cy = float((w * xx).sum() / total), float((w * yy).sum() / total)
    peak = float(np.max(data[island]))
    return Component(x=cx + offset[1], y=cy + offset[0], peak=peak, sigma_major=beam_sigma_pixels,
                     sigma_minor=beam_sigma_pixels, theta=0.0,
                     flux=float(np.where(island, data, 0.0).sum() / beam_area_pixels), fitted=False)
