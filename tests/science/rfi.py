"""Observations with injected RFI, from a code path that shares nothing with the package.

The flagging references (``test_flagging_references.py`` and
``benchmarks/bench_flagging_references.py``) need data whose RFI is known sample by
sample, in a bright field as well as a faint one. Nothing here imports
``cosmic_horizons_lab``: uvw come from the VLA's antenna positions (the shipped JSON,
read as a file) by the textbook rotation (Thompson, Moran & Swenson, eq. 4.1), and the
visibilities of point sources are numpy phases of those uvw. The package's own
simulator (``science/simulate.py``) is not used, so a mistake there cannot hide one in
the flagger.

Definitions the tests and the benchmark share:

* **σ** is the thermal noise of one visibility: the standard deviation of its real part
  (and of its imaginary part), the same in every visibility.
* An RFI sample's **strength** is ``|RFI| / σ``, its complex amplitude in units of σ
  (the larger of the two polarisations).
* The truth mask holds every (baseline, time, channel) sample where RFI was injected,
  however faint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ANTENNAS = Path(__file__).resolve().parents[2] / "cosmic_horizons_lab" / "data" / "vla_antennas.json"
C = 299_792_458.0
ARCMIN = np.pi / 180 / 60
SIDEREAL_RATE = 2 * np.pi / 86164.0905  # rad/s


@dataclass(frozen=True)
class Field:
    """One observation: the VLA in D configuration at L band through transit.

    ``flux_jy`` is the sky's total flux, spread over point sources out to 13′ from the
    phase centre (inside the 30′ primary beam), so each baseline sees beating fringes
    that change along time and frequency. ``sigma_jy`` is σ (module docstring).
    """

    flux_jy: float
    sigma_jy: float = 0.034
    n_times: int = 540
    integration_s: float = 20.0  # 3 h track
    n_channels: int = 64
    freq_start_hz: float = 1.2e9
    channel_width_hz: float = 2e6
    dec_deg: float = 34.0
    n_narrowband: int = 10
    n_broadband: int = 10
    rfi: bool = True
    seed: int = 0


BRIGHT = Field(flux_jy=5.8)  # 5.8 Jy / 0.034 Jy: about 170σ per visibility
FAINT = Field(flux_jy=0.02)  # below σ: noise dominated

# (east offset, north offset in arcmin, fraction of the total flux, spectral index)
_SOURCES = ((0.0, 0.0, 0.35, -0.7), (4.0, -3.0, 0.2, -0.8), (-8.5, 5.0, 0.15, -0.5),
            (11.0, 6.5, 0.12, -1.0), (-3.0, -12.0, 0.1, -0.7), (7.5, 9.0, 0.08, 0.0))


@dataclass
class Observation:
    vis: np.ndarray  # complex64 (B, T, F, 2): RR, LL
    clean: np.ndarray  # complex64 (B, T, F, 2): the same without the RFI
    truth: np.ndarray  # bool (B, T, F): RFI injected
    strength: np.ndarray  # float32 (B, T, F): |RFI| / σ, 0 where none
    sigma_jy: float
    field: Field


def uvw_metres(field: Field) -> np.ndarray:
    """(B, T, 3) baseline coordinates in metres, hour angle from -1.5 h to +1.5 h."""
    spec = json.loads(ANTENNAS.read_text())
    xyz = np.asarray(spec["relative_ecef_m"], float)
    lon = np.radians(spec["longitude_deg"])
    # ECEF differences to the equatorial frame of the array's meridian (X: H=0, Y: H=-6h)
    lx = np.cos(lon) * xyz[:, 0] + np.sin(lon) * xyz[:, 1]
    ly = -np.sin(lon) * xyz[:, 0] + np.cos(lon) * xyz[:, 1]
    lz = xyz[:, 2]
    i, j = np.triu_indices(len(xyz), 1)
    bx, by, bz = lx[j] - lx[i], ly[j] - ly[i], lz[j] - lz[i]
    t = (np.arange(field.n_times) - (field.n_times - 1) / 2) * field.integration_s
    h = (t * SIDEREAL_RATE)[None, :]
    d = np.radians(field.dec_deg)
    bx, by, bz = bx[:, None], by[:, None], bz[:, None]
    u = np.sin(h) * bx + np.cos(h) * by
    v = -np.sin(d) * np.cos(h) * bx + np.sin(d) * np.sin(h) * by + np.cos(d) * bz
    w = np.cos(d) * np.cos(h) * bx - np.cos(d) * np.sin(h) * by + np.sin(d) * bz
    return np.stack([u, v, w], axis=-1)


def sky_visibilities(field: Field) -> np.ndarray:
    """(B, T, F) complex visibilities of the field's point sources (Stokes I, no noise)."""
    uvw = uvw_metres(field)
    freqs = field.freq_start_hz + field.channel_width_hz * np.arange(field.n_channels)
    nu0 = freqs.mean()
    out = np.zeros(uvw.shape[:2] + (len(freqs),), np.complex128)
    for east, north, frac, alpha in _SOURCES:
        l, m = np.sin(east * ARCMIN), np.sin(north * ARCMIN)
        n = np.sqrt(1 - l * l - m * m)
        path = uvw[..., 0] * l + uvw[..., 1] * m + uvw[..., 2] * (n - 1)  # metres
        flux = field.flux_jy * frac * (freqs / nu0) ** alpha
        out += flux * np.exp(-2j * np.pi * path[..., None] * (freqs / C))
    return out


def _inject(field: Field, nb: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RFI visibilities (B, T, F, 2) in Jy and the truth mask (B, T, F).

    Terrestrial RFI reaches every baseline at the same times and channels, with a strength
    that differs from baseline to baseline (short baselines decorrelate it least) and a
    phase of its own that drifts in time and, for broadband RFI, winds across the band
    (a delay), as a transmitter that does not move with the sky does. Strengths are drawn
    log-uniform from 1σ to 200σ, so the faint end tests recall and the bright end
    precision near strong RFI.
    """
    nt, nf = field.n_times, field.n_channels
    rfi = np.zeros((nb, nt, nf, 2), np.complex128)
    t = np.arange(nt)
    f = np.arange(nf)

    def event(t0: int, t1: int, f0: int, f1: int, broadband: bool) -> None:
        level = np.exp(rng.uniform(np.log(1.0), np.log(200.0)))
        per_baseline = level * np.exp(rng.uniform(np.log(0.3), 0.0, nb))
        tt, ff = t[t0:t1], f[f0:f1]
        # slow modulation along the event's long axis (a transmitter switching its power)
        axis = ff if broadband else tt
        mod = 1 + 0.5 * np.sin(2 * np.pi * axis / rng.uniform(5, 40) + rng.uniform(0, 2 * np.pi))
        shape = mod[None, :] if broadband else mod[:, None]
        rate = rng.uniform(-0.3, 0.3, nb)[:, None, None]  # rad per integration
        delay = rng.uniform(-0.5, 0.5, nb)[:, None, None] if broadband else 0.0  # rad per channel
        phase = (rng.uniform(0, 2 * np.pi, nb)[:, None, None] + rate * tt[None, :, None]
                 + delay * ff[None, None, :])
        amp = per_baseline[:, None, None] * shape[None] * field.sigma_jy
        pol = rng.uniform(0.5, 1.0, 2) * np.exp(1j * rng.uniform(0, 2 * np.pi, 2))
        rfi[:, t0:t1, f0:f1, :] += (amp * np.exp(1j * phase))[..., None] * pol

    for _ in range(field.n_narrowband):
        width = int(rng.integers(1, 3))
        f0 = int(rng.integers(0, nf - width))
        span = int(rng.uniform(0.05, 0.5) * nt)
        t0 = int(rng.integers(0, nt - span))
        event(t0, t0 + span, f0, f0 + width, broadband=False)
    for _ in range(field.n_broadband):
        length = int(rng.integers(1, 5))
        t0 = int(rng.integers(0, nt - length))
        span = int(rng.uniform(0.5, 1.0) * nf)
        f0 = int(rng.integers(0, nf - span + 1))
        event(t0, t0 + length, f0, f0 + span, broadband=True)
    return rfi, np.abs(rfi).max(axis=-1) > 0


def observe(field: Field) -> Observation:
    """The field's visibilities (sky + noise + RFI) with the RFI truth."""
    rng = np.random.default_rng(field.seed)
    sky = sky_visibilities(field)
    nb, nt, nf = sky.shape
    noise = field.sigma_jy * (rng.standard_normal((nb, nt, nf, 2))
                              + 1j * rng.standard_normal((nb, nt, nf, 2)))
    vis = sky[..., None] + noise
    clean = vis.astype(np.complex64)
    truth = np.zeros((nb, nt, nf), bool)
    strength = np.zeros((nb, nt, nf), np.float32)
    if field.rfi:
        rfi, truth = _inject(field, nb, rng)
        vis += rfi
        strength = (np.abs(rfi).max(axis=-1) / field.sigma_jy).astype(np.float32)
    return Observation(vis.astype(np.complex64), clean, truth, strength, field.sigma_jy, field)


def aoflagger_flags(vis: np.ndarray) -> np.ndarray:
    """AOFlagger's flags (B, T, F) with its generic strategy (the ``aoflagger`` PyPI package,
    GPL: a test reference only), baseline by baseline, every polarisation's real and imaginary
    parts given to it as ``benchmarks/bench_science.py`` does."""
    import aoflagger

    flagger = aoflagger.AOFlagger()
    strategy = flagger.load_strategy_file(flagger.find_strategy_file(aoflagger.TelescopeId.Generic))
    nb, nt, nf, npol = vis.shape
    images = flagger.make_image_set(nt, nf, 2 * npol)
    out = np.zeros((nb, nt, nf), bool)
    for b in range(nb):
        for p in range(npol):
            # AOFlagger images are channels (rows) × times (columns)
            images.set_image_buffer(2 * p, np.ascontiguousarray(vis[b, :, :, p].real.T, np.float64))
            images.set_image_buffer(2 * p + 1, np.ascontiguousarray(vis[b, :, :, p].imag.T, np.float64))
        out[b] = strategy.run(images).get_buffer().T
    return out


@dataclass(frozen=True)
class Score:
    """Flags scored against the truth.

    precision: flagged samples that hold RFI / flagged samples;
    recall: flagged RFI samples / RFI samples;
    recall_5, recall_20: recall over RFI samples of strength ≥ 5σ, ≥ 20σ;
    flagged: fraction of all samples flagged.
    """

    precision: float
    recall: float
    recall_5: float
    recall_20: float
    flagged: float


def score(flags: np.ndarray, obs: Observation) -> Score:
    """Score (B, T, F) flags (or (B, T, F, P), any polarisation counting) against ``obs``."""
    if flags.ndim == 4:
        flags = flags.any(axis=-1)
    truth = obs.truth
    tp = flags & truth

    def recall_over(sel: np.ndarray) -> float:
        return float(tp[sel].sum() / max(sel.sum(), 1))

    return Score(precision=float(tp.sum() / max(flags.sum(), 1)),
                 recall=recall_over(truth),
                 recall_5=recall_over(truth & (obs.strength >= 5)),
                 recall_20=recall_over(truth & (obs.strength >= 20)),
                 flagged=float(flags.mean()))
