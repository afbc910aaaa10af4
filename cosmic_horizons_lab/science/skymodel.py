"""Sky models: components on the sky and the visibilities they produce.

The measurement equation, the one home of the project's sign convention::

    V_pq(ν) = Σ_k S_k (ν/ν0)^α_k exp(+2πi (u l_k + v m_k + w (n_k - 1)))

with ``(u, v, w)`` as pyuvdata hands them over (``uvw = x_q - x_p``, antenna 2
minus antenna 1, in wavelengths here), ``l`` toward east (increasing right
ascension) and ``m`` toward north. This is the convention of the data pyuvdata
reads and writes (uvfits, UVH5, Measurement Sets), of pyuvsim, and of CASA and
WSClean reading the same files: a source east of the phase centre images east.
``tests/science/test_references.py`` holds it to pyuvsim and WSClean. The imager
(:mod:`.gridding`) is the adjoint, ``exp(-2πi …)``; calibration (AlphaCal) and the
simulator predict through :func:`predict`.

(Until 0.x this module used ``exp(-2πi …)`` with pyuvdata's uvw, which mirrored
every off-centre source through the phase centre; the project's simulator, imager
and calibration agreed only with each other.)
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
    ``ra``/``dec`` (radians, FK5 J2000), when known, let :func:`predict` place it
    exactly through :class:`Geometry` instead of through the flat ``(l, m)`` offset.
    """

    l: float
    m: float
    flux: float
    spectral_index: float = 0.0
    fwhm: float = 0.0
    ra: float | None = None
    dec: float | None = None


class Geometry:
    """Exact geometric delays of one observation toward any direction on the sky.

    The flat offset ``u l + v m + w (n - 1)`` uses catalogue (J2000) offsets,
    but the correlator, pyuvsim and pyuvdata's phasing work with *apparent*
    directions (precession, nutation, aberration): across a field of 10′ the two
    differ by ~1e-4 of the offset, a phase error of ~1e-3 on VLA baselines. The
    exact phase of a source relative to the phase centre is ``(w_src - w_0) / λ``,
    the w coordinate of each baseline toward the source's apparent position minus
    that toward the phase centre's, both from pyuvdata (``calc_app_coords`` and
    ``calc_uvw``, the code that phases the data). It is computed per time and
    antenna, then differenced per baseline: ``uvw = x_q - x_p``.
    """

    def __init__(self, uv: Any, ant1: np.ndarray, ant2: np.ndarray, times: np.ndarray,
                 present: np.ndarray) -> None:
        self._uv = uv
        self._times = np.asarray(times, float)
        self._ant1, self._ant2, self._present = ant1, ant2, present
        numbers = np.asarray(uv.telescope.antenna_numbers)
        self._numbers = numbers
        self._index = {int(a): i for i, a in enumerate(numbers)}
        _, first_row = np.unique(uv.time_array, return_index=True)
        self._lst = np.asarray(uv.lst_array)[first_row]  # vs.times are the unique times
        cat = uv.phase_center_catalog[int(uv.phase_center_id_array[0])]
        self._frame = str(cat.get("cat_frame") or "icrs")
        self._epoch = cat.get("cat_epoch")
        self._centre = (float(cat.get("cat_lon", 0.0)), float(cat.get("cat_lat", 0.0)))
        self._w_centre = self._antenna_w(*self._centre)

    @classmethod
    def of(cls, vs: Any) -> "Geometry | None":
        """The geometry of a :class:`.visibilities.VisibilitySet` read through pyuvdata
        (``None`` for one built without its UVData, or not phased to a sidereal centre)."""
        uv = getattr(vs, "source", None)
        if uv is None:
            return None
        cat = uv.phase_center_catalog.get(int(uv.phase_center_id_array[0]), {})
        if cat.get("cat_type") != "sidereal":
            return None
        return cls(uv, vs.ant1, vs.ant2, vs.times, vs.present)

    def _antenna_w(self, ra: float, dec: float) -> np.ndarray:
        """w (metres) of every antenna's position toward (ra, dec), per time: (T, N)."""
        from pyuvdata.utils import phasing

        tel = self._uv.telescope
        nt, na = len(self._times), len(self._numbers)
        app_ra, app_dec = phasing.calc_app_coords(
            lon_coord=ra, lat_coord=dec, coord_frame=self._frame, coord_epoch=self._epoch,
            time_array=self._times, lst_array=self._lst, telescope_loc=tel.location,
            telescope_frame="itrs")
        # "baselines" from antenna 0 to each antenna: w of x_a - x_0, linear in x_a
        uvw = phasing.calc_uvw(
            app_ra=np.repeat(app_ra, na), app_dec=np.repeat(app_dec, na),
            lst_array=np.repeat(self._lst, na), use_ant_pos=True,
            antenna_positions=tel.antenna_positions, antenna_numbers=self._numbers,
            ant_1_array=np.full(nt * na, self._numbers[0]), ant_2_array=np.tile(self._numbers, nt),
            telescope_lat=tel.location.lat.rad, telescope_lon=tel.location.lon.rad)
        return uvw[:, 2].reshape(nt, na)

    def delay_m(self, ra: float, dec: float) -> np.ndarray:
        """``w_src - w_0`` in metres per (baseline, time), zero where a row is absent."""
        dw = self._antenna_w(ra, dec) - self._w_centre  # (T, N)
        i1 = np.array([self._index[int(a)] for a in self._ant1])
        i2 = np.array([self._index[int(a)] for a in self._ant2])
        out = (dw[:, i2] - dw[:, i1]).T  # (B, T): uvw = x_q - x_p
        return np.where(self._present, out, 0.0)


def predict(uvw_m: np.ndarray, freqs: np.ndarray, sources: tuple[Source, ...] | list[Source],
            ref_freq: float | None = None, geometry: Geometry | None = None) -> np.ndarray:
    """Model visibilities of a list of components: ``uvw_m`` (..., 3) -> (..., F) complex128.

    With a ``geometry`` (``uvw_m`` then of shape (B, T, 3) of that observation),
    components that know their RA/Dec are phased exactly (see :class:`Geometry`);
    the others, and all of them without one, through the flat ``(l, m)`` offset.
    """
    ref = float(ref_freq or freqs[0])
    lam = C / np.asarray(freqs, float)
    out = np.zeros(uvw_m.shape[:-1] + (len(freqs),), np.complex128)
    u = uvw_m[..., 0, None] / lam
    v = uvw_m[..., 1, None] / lam
    w = uvw_m[..., 2, None] / lam
    for s in sources:
        if geometry is not None and s.ra is not None and s.dec is not None:
            turns = geometry.delay_m(s.ra, s.dec)[..., None] / lam
        else:
            n = np.sqrt(1.0 - s.l**2 - s.m**2)
            turns = u * s.l + v * s.m + w * (n - 1.0)
        amp = s.flux * (np.asarray(freqs) / ref) ** s.spectral_index
        term = amp * np.exp(2j * np.pi * turns)
        if s.fwhm > 0:
            sig = s.fwhm / np.sqrt(8 * np.log(2))
            term = term * np.exp(-2 * np.pi**2 * sig**2 * (u**2 + v**2))
        out += term
    return out


def radec_from_lm(l: float, m: float, ra0: float, dec0: float) -> tuple[float, float]:
    """The (ra, dec) of direction cosines (l, m) about (ra0, dec0), radians: the inverse
    of :func:`lm_from_radec` (the SIN projection)."""
    n = np.sqrt(max(0.0, 1.0 - l * l - m * m))
    dec = np.arcsin(m * np.cos(dec0) + n * np.sin(dec0))
    ra = ra0 + np.arctan2(l, n * np.cos(dec0) - m * np.sin(dec0))
    return float(ra % (2 * np.pi)), float(dec)


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
                          np.radians(float(c.get("fwhm_arcsec", 0.0)) / 3600.0),
                          ra=float(np.radians(c["ra_deg"])), dec=float(np.radians(c["dec_deg"]))))
    return out
