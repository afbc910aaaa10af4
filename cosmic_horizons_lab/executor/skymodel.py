"""Sky models: components on the sky and the visibilities they produce.

Calibration predicts its model from here and the simulator its truth, so both
share one measurement equation (see :mod:`.simulate`) and one sign convention,
which the imager inverts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

C = 299_792_458.0


@dataclass(frozen=True)
class Source:
    """A sky component at offset (l, m) from the phase centre, in radians.

    ``fwhm`` > 0 makes it a circular Gaussian of that full width at half maximum (radians).
    """

    l: float
    m: float
    flux: float
    spectral_index: float = 0.0
    fwhm: float = 0.0


def predict(uvw_m: np.ndarray, freqs: np.ndarray, sources: tuple[Source, ...] | list[Source],
            ref_freq: float | None = None) -> np.ndarray:
    """Model visibilities of a list of components: ``uvw_m`` (..., 3) -> (..., F) complex128."""
    ref = float(ref_freq or freqs[0])
    lam = C / np.asarray(freqs, float)
    out = np.zeros(uvw_m.shape[:-1] + (len(freqs),), np.complex128)
    u = uvw_m[..., 0, None] / lam
    v = uvw_m[..., 1, None] / lam
    w = uvw_m[..., 2, None] / lam
    for s in sources:
        n = np.sqrt(1.0 - s.l**2 - s.m**2)
        phase = -2j * np.pi * (u * s.l + v * s.m + w * (n - 1.0))
        amp = s.flux * (np.asarray(freqs) / ref) ** s.spectral_index
        term = amp * np.exp(phase)
        if s.fwhm > 0:
            sig = s.fwhm / np.sqrt(8 * np.log(2))
            term = term * np.exp(-2 * np.pi**2 * sig**2 * (u**2 + v**2))
        out += term
    return out


def lm_from_radec(ra: float, dec: float, ra0: float, dec0: float) -> tuple[float, float]:
    """Direction cosines (l toward east, m toward north) of (ra, dec) about (ra0, dec0), radians."""
    l = np.cos(dec) * np.sin(ra - ra0)
    m = np.sin(dec) * np.cos(dec0) - np.cos(dec) * np.sin(dec0) * np.cos(ra - ra0)
    return float(l), float(m)


def sources_from_params(components: list[dict[str, Any]], phase_centre: tuple[float, float]
                        ) -> list[Source]:
    """Components given as ``{"ra_deg", "dec_deg", "flux_jy", "spectral_index"?, "fwhm_arcsec"?}``."""
    out = []
    for c in components:
        l, m = lm_from_radec(np.radians(c["ra_deg"]), np.radians(c["dec_deg"]), *phase_centre)
        out.append(Source(l, m, float(c["flux_jy"]), float(c.get("spectral_index", 0.0)),
                          np.radians(float(c.get("fwhm_arcsec", 0.0)) / 3600.0)))
    return out
