"""Synthetic interferometer observations whose truth we know.

Every figure the science agents report (flagged fraction, gain error, source
positions and fluxes) is only checkable against data where the answer is known,
so the generator keeps everything it injected: the sky, the antenna gains, the
noise level and the RFI mask. It uses the real VLA antenna positions of the
shipped demo observation and computes uvw from hour angle and declination, so
the uv coverage, and hence the PSF, is a real instrument's. Output is
deterministic in the seed.

The measurement equation used throughout (and matched by the imager):
``V_pq(ν) = g_p(ν,t) conj(g_q(ν,t)) M_pq(ν)``, with the sky term ``M`` of
:func:`.skymodel.predict` (its docstring states the sign convention and which
reference software shares it) and ``uvw = x_q - x_p`` as pyuvdata has it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cosmic_horizons_lab.data import SIMULATED_DATASETS
from cosmic_horizons_lab.science.skymodel import Geometry, Source, predict, radec_from_lm
from cosmic_horizons_lab.science.visibilities import VisibilitySet, from_uvdata, quiet, write_uvfits

ANTENNA_FILE = Path(__file__).resolve().parent.parent / "data" / "vla_antennas.json"
POL_CODES = {"RR": -1, "LL": -2, "RL": -3, "LR": -4, "XX": -5, "YY": -6}


@dataclass(frozen=True)
class RFIConfig:
    """How much RFI to inject, in units of the per-visibility noise σ (or Jy when noise is 0)."""

    channel_stripes: int = 3
    time_bursts: int = 3
    blobs: int = 3
    amplitude: tuple[float, float] = (6.0, 60.0)


@dataclass(frozen=True)
class SimConfig:
    n_times: int = 16
    integration_s: float = 60.0
    n_channels: int = 32
    freq_start_hz: float = 1.4e9
    channel_width_hz: float = 1.0e6
    pols: tuple[str, ...] = ("RR", "LL")
    ra_deg: float = 152.0
    dec_deg: float = 34.0
    hour_angle_start_h: float = -1.0
    sources: tuple[Source, ...] = (Source(0.0, 0.0, 1.0),)
    gain_amplitude_sigma: float = 0.1
    gain_phase: bool = True
    delay_ns: float = 2.0
    noise_jy: float = 0.0
    rfi: RFIConfig | None = None
    antennas: int | None = None  # use the first n antennas of the layout
    seed: int = 0


@dataclass
class Simulation:
    """The observation and what went into it."""

    data: VisibilitySet
    config: SimConfig
    model: np.ndarray  # (B, T, F) sky visibilities before gains and noise (per parallel hand)
    gains: np.ndarray  # (T, F, n_ant, n_feed) complex
    antennas: np.ndarray  # antenna numbers, the gains' third axis
    rfi_mask: np.ndarray  # bool (B, T, F): where RFI was injected
    noise_jy: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)


def _layout(n: int | None) -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[str]]:
    spec = json.loads(ANTENNA_FILE.read_text())
    pos = np.asarray(spec["relative_ecef_m"], float)
    numbers = np.asarray(spec["antenna_numbers"], int)
    names = list(spec["antenna_names"])
    if n is not None:
        pos, numbers, names = pos[:n], numbers[:n], names[:n]
    return spec, pos, numbers, names


def _rfi(cfg: RFIConfig, shape: tuple[int, int, int], scale: float,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RFI visibilities (B, T, F) and their mask (B, T, F).

    Terrestrial RFI reaches all baselines at the same times and channels, with
    a baseline-dependent strength and a noise-like phase. Each region has a
    bounded profile (never below half its peak) so the mask means "visibly
    corrupted", not "an exponentially small tail".
    """
    nb, nt, nf = shape
    profile = np.zeros((nt, nf))
    tt, ff = np.meshgrid(np.arange(nt), np.arange(nf), indexing="ij")
    lo, hi = cfg.amplitude
    for _ in range(cfg.channel_stripes):
        c = rng.integers(0, nf)
        t0 = rng.integers(0, nt // 2)
        t1 = rng.integers(t0 + nt // 3, nt + 1)
        profile[t0:t1, c] = np.maximum(profile[t0:t1, c], rng.uniform(lo, hi))
    for _ in range(cfg.time_bursts):
        t = rng.integers(0, nt)
        f0 = rng.integers(0, nf // 2)
        f1 = rng.integers(f0 + nf // 3, nf + 1)
        profile[t, f0:f1] = np.maximum(profile[t, f0:f1], rng.uniform(lo, hi))
    for _ in range(cfg.blobs):
        ct, cf = rng.uniform(0, nt), rng.uniform(0, nf)
        rt, rf = rng.uniform(1.5, max(2.0, nt / 10)), rng.uniform(1.5, max(2.0, nf / 8))
        r2 = ((tt - ct) / rt) ** 2 + ((ff - cf) / rf) ** 2
        blob = np.where(r2 <= 1.0, rng.uniform(lo, hi) * (1.0 - 0.5 * r2), 0.0)
        profile = np.maximum(profile, blob)
    mask = profile > 0
    strength = rng.uniform(0.7, 1.3, size=(nb, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(nb, nt, nf))
    rfi = scale * strength * profile[None] * np.exp(1j * phase)
    return rfi, np.broadcast_to(mask, (nb, nt, nf)).copy()


def simulate(cfg: SimConfig) -> Simulation:
    """Generate an observation from ``cfg``; the same config always gives the same data."""
    from astropy.coordinates import EarthLocation
    from astropy import units as u
    from astropy.time import Time
    from pyuvdata import Telescope, UVData

    rng = np.random.default_rng(cfg.seed)
    spec, pos, numbers, names = _layout(cfg.antennas)
    loc = EarthLocation.from_geodetic(spec["longitude_deg"] * u.deg, spec["latitude_deg"] * u.deg,
                                      spec["height_m"] * u.m)
    tel = Telescope.new(name=spec["telescope"], location=loc, antenna_positions=pos,
                        antenna_names=names, antenna_numbers=numbers, feeds=["r", "l"],
                        mount_type="alt-az", instrument="VLA",
                        update_from_known=False)
    ra, dec = np.radians(cfg.ra_deg), np.radians(cfg.dec_deg)
    pairs = [(int(numbers[i]), int(numbers[j])) for i in range(len(numbers))
             for j in range(i + 1, len(numbers))]
    # Choose the start time so the first integration sits at the requested hour angle.
    jd0 = 2460000.5
    freqs = cfg.freq_start_hz + cfg.channel_width_hz * np.arange(cfg.n_channels)
    lst0 = Time(jd0, format="jd", scale="utc", location=loc).sidereal_time("apparent").rad
    ha0 = np.radians(cfg.hour_angle_start_h * 15.0)
    dphase = (ra + ha0 - lst0) % (2 * np.pi)
    jd_start = jd0 + dphase / (2 * np.pi) / 1.002737909350795
    times = jd_start + cfg.integration_s * np.arange(cfg.n_times) / 86400.0
    with quiet():
        uv = UVData.new(freq_array=freqs, polarization_array=[POL_CODES[p] for p in cfg.pols],
                        times=times, telescope=tel, antpairs=pairs, do_blt_outer=True,
                        time_axis_faster_than_bls=True,
                        integration_time=cfg.integration_s, channel_width=cfg.channel_width_hz,
                        phase_center_catalog={0: {"cat_name": "SIM", "cat_type": "sidereal",
                                                  "cat_lon": ra, "cat_lat": dec,
                                                  "cat_frame": "fk5", "cat_epoch": 2000.0}},
                        vis_units="Jy", empty=True,
                        history=f"cosmic_horizons_lab.simulate seed={cfg.seed}")
    vs = from_uvdata(uv)
    nb, nt, nf, npol = vs.shape
    index = {a: i for i, a in enumerate(numbers)}
    i1 = np.array([index[a] for a in vs.ant1])
    i2 = np.array([index[a] for a in vs.ant2])
    # uvw = x_q - x_p is the convention pyuvdata and uvfits use (ant2 minus ant1); pyuvdata
    # computes them (apparent coordinates, as the data are phased), so the file is what any
    # other software would write for these antennas and times.
    with quiet():
        uv.set_uvws_from_antenna_positions()
    vs.uvw[vs.present] = uv.uvw_array[vs.row_index[vs.present]]
    # the components placed by their RA/Dec, so the prediction is exact (skymodel.Geometry)
    sources = [s if s.ra is not None else replace(s, **dict(zip(("ra", "dec"),
                                                                radec_from_lm(s.l, s.m, ra, dec))))
               for s in cfg.sources]
    model = predict(vs.uvw, freqs, sources, geometry=Geometry.of(vs))  # (B, T, F)

    n_ant = len(numbers)
    n_feed = 2
    amp = np.clip(1.0 + cfg.gain_amplitude_sigma * rng.standard_normal((n_ant, n_feed)), 0.2, None)
    ph = rng.uniform(-np.pi, np.pi, (n_ant, n_feed)) if cfg.gain_phase else np.zeros((n_ant, n_feed))
    delay = cfg.delay_ns * 1e-9 * rng.standard_normal((n_ant, n_feed))
    drift = 0.2 * rng.standard_normal((n_ant, n_feed)) if cfg.gain_phase else np.zeros((n_ant, n_feed))
    tfrac = np.linspace(0, 1, nt)[:, None, None, None]
    gains = (amp * np.exp(1j * (ph + drift * tfrac
                                + 2 * np.pi * delay * (freqs - freqs[0])[None, :, None, None])))
    gains = np.broadcast_to(gains, (nt, nf, n_ant, n_feed)).astype(np.complex128)

    feed_of = {"RR": (0, 0), "LL": (1, 1), "RL": (0, 1), "LR": (1, 0),
               "XX": (0, 0), "YY": (1, 1)}
    noise = cfg.noise_jy
    data = np.zeros((nb, nt, nf, npol), np.complex128)
    for k, pol in enumerate(cfg.pols):
        fa, fb = feed_of[pol]
        sky = model if fa == fb else np.zeros_like(model)
        g1 = gains[:, :, i1, fa].transpose(2, 0, 1)
        g2 = gains[:, :, i2, fb].transpose(2, 0, 1)
        data[..., k] = g1 * np.conj(g2) * sky
    if noise > 0:
        data += noise * (rng.standard_normal(data.shape) + 1j * rng.standard_normal(data.shape))
    rfi_mask = np.zeros((nb, nt, nf), bool)
    if cfg.rfi is not None:
        rfi, rfi_mask = _rfi(cfg.rfi, (nb, nt, nf), noise if noise > 0 else 1.0, rng)
        data += rfi[..., None]
    vs.vis = data.astype(np.complex64)
    vs.flags = np.zeros(vs.vis.shape, bool)
    vs.weights = np.ones(vs.vis.shape, np.float32)
    return Simulation(data=vs, config=cfg, model=model, gains=gains, antennas=numbers,
                      rfi_mask=rfi_mask, noise_jy=noise)


ARCSEC = np.pi / 180 / 3600

#: Named synthetic datasets (``SIM.<name>``); each generates in well under 5 s on a CPU.
SIM_PRESETS: dict[str, dict[str, Any]] = {
    "SIM.small": {
        "description": SIMULATED_DATASETS["SIM.small"],
        "config": SimConfig(
            n_times=16, n_channels=32, noise_jy=0.01, seed=11,
            sources=(Source(0, 0, 1.0), Source(-300 * ARCSEC, 200 * ARCSEC, 0.3),
                     Source(250 * ARCSEC, -150 * ARCSEC, 0.2)),
        ),
    },
    "SIM.rfi": {
        "description": SIMULATED_DATASETS["SIM.rfi"],
        "config": SimConfig(
            n_times=64, integration_s=10.0, n_channels=64, freq_start_hz=36.3e9,
            channel_width_hz=125e3, noise_jy=0.4, seed=7, delay_ns=1.0,
            rfi=RFIConfig(channel_stripes=4, time_bursts=4, blobs=4),
        ),
    },
    "SIM.sky": {
        "description": SIMULATED_DATASETS["SIM.sky"],
        "config": SimConfig(
            n_times=48, integration_s=300.0, n_channels=16, freq_start_hz=1.0e9,
            channel_width_hz=64e6, hour_angle_start_h=-2.0, noise_jy=0.002, seed=3,
            gain_amplitude_sigma=0.0, gain_phase=False, delay_ns=0.0,
            sources=(Source(0, 0, 1.0), Source(-420 * ARCSEC, 310 * ARCSEC, 0.5),
                     Source(515 * ARCSEC, -250 * ARCSEC, 0.3), Source(130 * ARCSEC, 640 * ARCSEC, 0.2),
                     Source(-610 * ARCSEC, -480 * ARCSEC, 0.4),
                     Source(300 * ARCSEC, 300 * ARCSEC, 0.3, fwhm=90 * ARCSEC)),
        ),
    },
}


def preset(dataset_id: str, **overrides: Any) -> SimConfig:
    if dataset_id not in SIM_PRESETS:
        raise KeyError(f"unknown synthetic dataset {dataset_id!r}; known: {sorted(SIM_PRESETS)}")
    return replace(SIM_PRESETS[dataset_id]["config"], **overrides)


def materialize(dataset_id: str, path: Path) -> Path:
    """Write the preset ``dataset_id`` (e.g. ``SIM.rfi``) as a uvfits file at ``path``.

    The file is a pure function of the preset: writing it twice gives the same
    visibilities, so a registry may cache it by name.
    """
    sim = simulate(preset(dataset_id))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_uvfits(sim.data, path, units="Jy",
                        history=f"{dataset_id}: {SIM_PRESETS[dataset_id]['description']}")
