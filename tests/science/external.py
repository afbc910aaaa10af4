"""Truth from software nobody on this project wrote: pyuvsim observes, pyuvdata corrupts and
writes, WSClean images.

Nothing here imports the package under test. The observations are built with pyuvdata
alone (the VLA's real antenna positions, shipped as data), their visibilities come from
pyuvsim (an analytic uniform beam, so a source's flux is its apparent flux), known antenna
gains are applied with pyuvdata's ``UVCal`` and ``uvcalibrate``, and the reference images
are WSClean's, made from Measurement Sets that pyuvdata writes.

Fluxes: pyradiosky's coherency puts half of Stokes I on each linear hand (``XX = I/2``),
whereas CASA, WSClean and this project take ``I = (XX + YY) / 2``. A source of flux ``S``
as those define it is therefore given to pyuvsim as ``I = 2 S``; WSClean's images confirm
the result (a source of ``S`` peaks at ``S`` Jy/beam).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ANTENNAS = Path(__file__).resolve().parents[2] / "cosmic_horizons_lab" / "data" / "vla_antennas.json"
C = 299_792_458.0
ARCMIN = np.pi / 180 / 60
VLA_DISH_M = 25.0


@dataclass(frozen=True)
class Band:
    """One observing set-up: VLA D configuration, 2 h through transit."""

    name: str
    freqs_hz: tuple[float, ...]
    cell_arcsec: float
    npix: int

    @property
    def half_power_radius(self) -> float:
        """Half the primary beam's FWHM (radians): 1.02 λ / D for a uniformly lit dish."""
        return 0.5 * 1.02 * (C / float(np.mean(self.freqs_hz))) / VLA_DISH_M


L_BAND = Band("L", (1.25e9, 1.35e9, 1.45e9, 1.55e9), cell_arcsec=8.0, npix=320)
S_BAND = Band("S", (2.7e9, 2.9e9, 3.1e9, 3.3e9), cell_arcsec=4.0, npix=288)

RA0_DEG, DEC0_DEG = 152.0, 34.0


@dataclass(frozen=True)
class PointSource:
    ra_deg: float
    dec_deg: float
    flux_jy: float


def field(band: Band) -> list[PointSource]:
    """Point sources in all four quadrants, from a fifth of the half-power radius out to it.

    Offsets are exact great-circle positions: ``(position angle east of north, distance)``
    turned into RA/Dec on the sphere, not flat offsets.
    """
    r = band.half_power_radius
    layout = [  # (position angle deg, fraction of the half-power radius, flux)
        (35.0, 0.25, 2.5), (120.0, 0.55, 1.2), (215.0, 0.85, 0.9), (300.0, 1.0, 1.6),
        (70.0, 0.9, 0.7), (250.0, 0.4, 1.0),
    ]
    ra0, dec0 = np.radians(RA0_DEG), np.radians(DEC0_DEG)
    out = []
    for pa_deg, frac, flux in layout:
        pa, d = np.radians(pa_deg), frac * r
        dec = np.arcsin(np.sin(dec0) * np.cos(d) + np.cos(dec0) * np.sin(d) * np.cos(pa))
        ra = ra0 + np.arctan2(np.sin(pa) * np.sin(d) * np.cos(dec0),
                              np.cos(d) - np.sin(dec0) * np.sin(dec))
        out.append(PointSource(float(np.degrees(ra)), float(np.degrees(dec)), flux))
    return out


def empty_observation(band: Band, n_times: int = 24, integration_s: float = 300.0):
    """A phased, empty UVData: the VLA's 19 antennas of the demo, ``n_times`` integrations
    centred on transit of the phase centre, linear feeds (what pyuvsim's beams give)."""
    from astropy import units as u
    from astropy.coordinates import EarthLocation
    from astropy.time import Time
    from pyuvdata import Telescope, UVData

    spec = json.loads(ANTENNAS.read_text())
    loc = EarthLocation.from_geodetic(spec["longitude_deg"] * u.deg, spec["latitude_deg"] * u.deg,
                                      spec["height_m"] * u.m)
    numbers = [int(n) for n in spec["antenna_numbers"]]
    tel = Telescope.new(name="VLA", location=loc, antenna_positions=np.asarray(spec["relative_ecef_m"]),
                        antenna_names=list(spec["antenna_names"]), antenna_numbers=numbers,
                        feeds=["x", "y"], mount_type="alt-az", instrument="VLA",
                        update_from_known=False)
    ra0, dec0 = np.radians(RA0_DEG), np.radians(DEC0_DEG)
    t0 = Time("2024-03-01T00:00:00", scale="utc", location=loc)
    lst = t0.sidereal_time("apparent").rad
    transit = t0.jd + ((ra0 - lst) % (2 * np.pi)) / (2 * np.pi) / 1.002737909350795
    times = transit + (np.arange(n_times) - (n_times - 1) / 2) * integration_s / 86400.0
    pairs = [(numbers[i], numbers[j]) for i in range(len(numbers)) for j in range(i + 1, len(numbers))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UVData.new(
            freq_array=np.asarray(band.freqs_hz, float), polarization_array=np.array([-5, -6, -7, -8]),
            times=times, telescope=tel, antpairs=pairs, do_blt_outer=True,
            integration_time=integration_s,
            channel_width=float(np.diff(band.freqs_hz).mean()) if len(band.freqs_hz) > 1 else 1e6,
            phase_center_catalog={0: {"cat_name": "FIELD", "cat_type": "sidereal", "cat_lon": ra0,
                                      "cat_lat": dec0, "cat_frame": "fk5", "cat_epoch": 2000.0}},
            vis_units="Jy", empty=True)


def linear_template(uv):
    """An empty UVData with ``uv``'s antennas, baselines, times, channels and phase centre, but
    linear feeds and all four products, which pyuvsim's beams need (uv may be circular)."""
    from pyuvdata import Telescope, UVData

    tel = uv.telescope
    lin = Telescope.new(name=str(tel.name), location=tel.location,
                        antenna_positions=np.asarray(tel.antenna_positions),
                        antenna_names=list(tel.antenna_names),
                        antenna_numbers=[int(n) for n in tel.antenna_numbers], feeds=["x", "y"],
                        mount_type="alt-az", instrument=str(tel.instrument or tel.name),
                        update_from_known=False)
    cat = uv.phase_center_catalog[int(uv.phase_center_id_array[0])]
    times = np.unique(uv.time_array)
    pairs = sorted({(int(a), int(b)) for a, b in zip(uv.ant_1_array, uv.ant_2_array)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UVData.new(
            freq_array=np.asarray(uv.freq_array, float).reshape(-1),
            polarization_array=np.array([-5, -6, -7, -8]), times=times, telescope=lin,
            antpairs=pairs, do_blt_outer=True, integration_time=float(np.median(uv.integration_time)),
            channel_width=float(np.median(uv.channel_width)),
            phase_center_catalog={0: {k: cat[k] for k in ("cat_name", "cat_type", "cat_lon",
                                                          "cat_lat", "cat_frame", "cat_epoch")}},
            vis_units="Jy", empty=True)


def observe(template, sources: list[PointSource]):
    """pyuvsim's visibilities of ``sources`` on ``template``'s baselines and times, phased
    by pyuvdata back to the template's phase centre."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from pyradiosky import SkyModel
    from pyuvdata.analytic_beam import UniformBeam
    from pyuvsim import BeamList, uvsim

    cat = template.phase_center_catalog[int(template.phase_center_id_array[0])]
    sky = SkyModel(
        name=[f"s{i}" for i in range(len(sources))],
        skycoord=SkyCoord(ra=[s.ra_deg for s in sources] * u.deg,
                          dec=[s.dec_deg for s in sources] * u.deg, frame="fk5", equinox="J2000"),
        # XX = I/2 in pyradiosky: give 2 S so that (XX + YY) / 2 = S (module docstring)
        stokes=np.array([[2.0 * s.flux_jy for s in sources], [0.0] * len(sources),
                         [0.0] * len(sources), [0.0] * len(sources)])[:, None, :] * u.Jy,
        spectral_type="flat")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uv = uvsim.run_uvdata_uvsim(template.copy(), beam_list=BeamList([UniformBeam()]),
                                    beam_dict=None, catalog=sky, quiet=True)
        uv.phase(lon=cat["cat_lon"], lat=cat["cat_lat"], epoch="J2000", phase_frame="fk5",
                 cat_name=cat["cat_name"])
    return uv


def known_gains(uv, seed: int = 5) -> np.ndarray:
    """Random complex gains per antenna and hand, amplitudes 0.5–2, any phase: (N_ant, 2)."""
    rng = np.random.default_rng(seed)
    n = uv.telescope.Nants
    amp = rng.uniform(0.5, 2.0, (n, 2))
    return amp * np.exp(1j * rng.uniform(-np.pi, np.pi, (n, 2)))


def corrupt(uv, gains: np.ndarray):
    """``uv`` with ``gains`` (N_ant, 2), constant in time and frequency, applied by pyuvdata:
    its ``uvcalibrate(..., undo=True)`` with a 'divide' UVCal, i.e. V_pq ← g_p conj(g_q) V_pq."""
    from pyuvdata import UVCal
    from pyuvdata.utils import uvcalibrate

    times = np.unique(uv.time_array)
    nt, nf = len(times), uv.Nfreqs
    tel = uv.telescope.copy()
    if tel.feed_array is None:  # pyuvsim's output does not carry the feeds a UVCal needs
        tel.feed_array = np.array([["x", "y"]] * tel.Nants)
        tel.feed_angle = np.zeros((tel.Nants, 2))
        tel.Nfeeds = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = UVCal.new(cal_style="sky", sky_catalog="truth", gain_convention="divide",
                        jones_array=np.array([-5, -6]), telescope=tel, time_array=times,
                        freq_array=uv.freq_array, integration_time=float(np.median(uv.integration_time)),
                        channel_width=uv.channel_width, update_telescope_from_known=False,
                        ant_array=np.asarray(uv.telescope.antenna_numbers),
                        ref_antenna_name=str(uv.telescope.antenna_names[0]))
        cal.gain_array = np.broadcast_to(gains[:, None, None, :], (len(gains), nf, nt, 2)).astype(
            np.complex128).copy()
        cal.flag_array = np.zeros(cal.gain_array.shape, bool)
        cal.quality_array = None
        out = uvcalibrate(uv, cal, inplace=False, undo=True, uvc_pol_convention="avg",
                          uvd_pol_convention="avg")
    return out


def add_noise(uv, sigma_jy: float, seed: int = 9):
    """Gaussian noise of ``sigma_jy`` on the real and the imaginary part of every sample."""
    out = uv.copy()
    rng = np.random.default_rng(seed)
    shape = out.data_array.shape
    out.data_array = out.data_array + sigma_jy * (rng.standard_normal(shape)
                                                  + 1j * rng.standard_normal(shape))
    return out


def write(uv, path: Path) -> Path:
    """Write ``uv`` as uvfits, UVH5 (``.uvh5``) or a Measurement Set (``.ms``, python-casacore)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix == ".ms":
            if path.exists():
                shutil.rmtree(path)
            uv.write_ms(str(path))
        elif path.suffix == ".uvh5":
            uv.write_uvh5(str(path), clobber=True)
        else:
            # single precision, as correlators write uvfits (CASA's importuvfits reads no other)
            if uv.data_array.dtype != np.complex64:
                uv = uv.copy()
                uv.data_array = uv.data_array.astype(np.complex64)
            uv.write_uvfits(str(path))
    return path


def wsclean(ms: Path, out_dir: Path, band: Band, *, niter: int = 0, extra: tuple[str, ...] = ()
            ) -> dict[str, Path]:
    """WSClean's images of ``ms`` (natural weighting, Stokes I, the band's grid):
    ``{"dirty": ..., "image": ...}``; with ``niter`` > 0 a Högbom/Cotton-Schwab CLEAN to 3σ."""
    exe = shutil.which("wsclean")
    if exe is None:
        raise RuntimeError("wsclean is not installed (Debian package 'wsclean'; scripts/test installs it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = out_dir / "ws"
    cmd = [exe, "-quiet", "-size", str(band.npix), str(band.npix), "-scale", f"{band.cell_arcsec}asec",
           "-weight", "natural", "-pol", "I", "-j", str(os.cpu_count() or 1), "-niter", str(niter),
           "-name", str(name), *extra]
    if niter:
        cmd += ["-auto-threshold", "3", "-mgain", "0.8"]
    subprocess.run([*cmd, str(ms)], check=True, capture_output=True, text=True, timeout=600)
    return {"dirty": Path(f"{name}-dirty.fits"), "image": Path(f"{name}-image.fits")}


def peak_near(image: np.ndarray, x: float, y: float, radius: int = 3) -> tuple[float, float, float]:
    """Sub-pixel position (x, y) and height of the local maximum nearest (x, y): the brightest
    pixel within ``radius``, refined by a parabola through it and its neighbours on each axis
    (the same estimator is applied to every image compared)."""
    ix, iy = int(round(float(x))), int(round(float(y)))
    box = image[iy - radius:iy + radius + 1, ix - radius:ix + radius + 1]
    dy, dx = np.unravel_index(int(np.argmax(box)), box.shape)
    py, px = iy - radius + dy, ix - radius + dx

    def vertex(a: float, b: float, c: float) -> float:
        den = a - 2 * b + c
        return 0.0 if den == 0 else 0.5 * (a - c) / den

    ox = vertex(image[py, px - 1], image[py, px], image[py, px + 1])
    oy = vertex(image[py - 1, px], image[py, px], image[py + 1, px])
    a, b, c = image[py, px - 1], image[py, px], image[py, px + 1]
    height = b - 0.25 * (a - c) * ox
    return px + ox, py + oy, float(height)


def read_plane(path: Path):
    """(2-D image, celestial WCS) of a FITS image with degenerate frequency/Stokes axes."""
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(path) as hdul:
        data = np.asarray(hdul[0].data, float)
        wcs = WCS(hdul[0].header).celestial
    while data.ndim > 2:
        data = data[0]
    return data, wcs


CASA_PYTHON = Path(__file__).resolve().parents[2] / ".services" / "casa" / "bin" / "python"

_CASA_IMAGE = """
import sys
from casatasks import exportfits, importuvfits, tclean
uvfits, ms, name, npix, cell = sys.argv[1:6]
importuvfits(fitsfile=uvfits, vis=ms)
tclean(vis=ms, imagename=name, imsize=[int(npix)] * 2, cell=cell + "arcsec", stokes="I",
       weighting="natural", gridder="wproject", wprojplanes=-1, deconvolver="hogbom",
       niter=int(sys.argv[6]), gain=0.1)
exportfits(imagename=name + ".image", fitsimage=name + ".fits", overwrite=True)
"""


def _casa_env(out_dir: Path) -> dict[str, str]:
    """The environment CASA runs in, offline: a home of its own in ``out_dir`` and a site config
    that names python-casacore's measures data and turns every auto-update off."""
    import casacore

    if not CASA_PYTHON.exists():
        raise RuntimeError(f"CASA is not installed at {CASA_PYTHON} (scripts/setup --test installs it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "home").mkdir(exist_ok=True)
    measures = Path(casacore.__file__).resolve().parent / "data"
    site = out_dir / "casasiteconfig.py"
    site.write_text(f"measurespath = {str(measures)!r}\nmeasures_auto_update = False\n"
                    "data_auto_update = False\n")
    return {**os.environ, "HOME": str(out_dir / "home"), "CASASITECONFIG": str(site)}


def casa_image(uvfits: Path, out_dir: Path, band: Band, niter: int = 0) -> Path:
    """CASA's image (``importuvfits`` then ``tclean``: natural weighting, w-projection, Högbom
    CLEAN of ``niter`` components, restored) of a uvfits file, as FITS. CASA runs from its own
    venv (``scripts/setup --test``), offline: its measures data are python-casacore's, named
    in a site config file."""
    env = _casa_env(out_dir)
    name = out_dir / "casa"
    subprocess.run([str(CASA_PYTHON), "-c", _CASA_IMAGE, str(uvfits), str(out_dir / "casa.ms"),
                    str(name), str(band.npix), str(band.cell_arcsec), str(niter)],
                   check=True, capture_output=True, text=True, timeout=600, env=env, cwd=out_dir)
    return Path(f"{name}.fits")


# --- source finding: a field of known signal-to-noise, and PyBDSF's catalogue -----------------

def image_noise(uv, sigma_jy: float) -> float:
    """The thermal σ (Jy/beam) of a naturally weighted Stokes I image of ``uv`` after
    :func:`add_noise` with ``sigma_jy``: I = (XX + YY) / 2 has σ/√2 on its real part, and
    the image averages every unflagged sample with equal weight."""
    n = int(np.count_nonzero(~uv.flag_array[..., 0])) if uv.flag_array is not None else \
        uv.Nblts * uv.Nfreqs
    return float(sigma_jy / np.sqrt(2 * n))


def snr_field(band: Band, sigma_image: float, snrs: tuple[float, ...]) -> list[PointSource]:
    """Point sources of ``snrs`` × ``sigma_image`` Jy, at position angles that go round all
    four quadrants, from 0.3 to 0.9 of the half-power radius (great-circle offsets)."""
    r = band.half_power_radius
    ra0, dec0 = np.radians(RA0_DEG), np.radians(DEC0_DEG)
    out = []
    for k, snr in enumerate(snrs):
        pa = np.radians(20.0 + 97.0 * k)  # 97° steps: every quadrant, no two sources together
        d = (0.3 + 0.6 * ((k * 0.37) % 1.0)) * r
        dec = np.arcsin(np.sin(dec0) * np.cos(d) + np.cos(dec0) * np.sin(d) * np.cos(pa))
        ra = ra0 + np.arctan2(np.sin(pa) * np.sin(d) * np.cos(dec0), np.cos(d) - np.sin(dec0) * np.sin(dec))
        out.append(PointSource(float(np.degrees(ra)), float(np.degrees(dec)), float(snr * sigma_image)))
    return out


_PYBDSF = """
import json, sys
import bdsf
out = []
for path in sys.argv[1:]:
    img = bdsf.process_image(path, quiet=True, ncores=1)
    out.append({"rms": float(img.clipped_rms),
                "ra_deg": [float(s.posn_sky_centroid[0]) for s in img.sources],
                "dec_deg": [float(s.posn_sky_centroid[1]) for s in img.sources],
                "total_flux": [float(s.total_flux) for s in img.sources],
                "peak_flux": [float(s.peak_flux_max) for s in img.sources],
                "code": [str(s.code) for s in img.sources]})
print("PYBDSF" + json.dumps(out))
"""


def pybdsf(paths: list[Path], timeout: float = 300) -> list[dict]:
    """PyBDSF's source list (``process_image`` with its defaults, offline) of each FITS image:
    ``{"rms", "ra_deg", "dec_deg", "total_flux", "peak_flux", "code"}`` per image, positions
    the sources' centroids. Run in a child process: PyBDSF sets up logging and writes a log
    beside each image, and its import alone takes seconds, so all images go in one call."""
    import sys

    proc = subprocess.run([sys.executable, "-c", _PYBDSF, *map(str, paths)], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"PyBDSF failed: {proc.stderr[-2000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PYBDSF")][-1]
    return json.loads(line[len("PYBDSF"):])


# --- CLEAN and noise references (issue 11) ------------------------------------------------

def sky_pixels(wcs, sources: list[PointSource]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) pixel positions of ``sources`` through an image's celestial WCS."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    x, y = wcs.world_to_pixel(SkyCoord([s.ra_deg for s in sources] * u.deg,
                                       [s.dec_deg for s in sources] * u.deg, frame="fk5"))
    return np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))


def near_sources(shape: tuple[int, int], xs: np.ndarray, ys: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` pixels of any of the positions (bool image)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    near = np.zeros(shape, bool)
    for x, y in zip(xs, ys):
        near |= np.hypot(xx - x, yy - y) <= radius
    return near


def mad_sigma(values: np.ndarray) -> float:
    """σ of a Gaussian from the median absolute deviation (1.4826 × MAD)."""
    v = np.asarray(values, float).ravel()
    return float(1.482602218505602 * np.median(np.abs(v - np.median(v))))


def spurious_fraction(model: np.ndarray, on_source: np.ndarray) -> float:
    """Share of a CLEAN model's absolute flux that lies off the true sources."""
    total = float(np.abs(model).sum())
    return float(np.abs(model[~on_source]).sum()) / total if total > 0 else 0.0


_CASA_CLEAN = """
import sys
from casatasks import exportfits, importuvfits, tclean
uvfits, ms, name, npix, cell, niter, nsigma = sys.argv[1:8]
importuvfits(fitsfile=uvfits, vis=ms)
tclean(vis=ms, imagename=name, imsize=[int(npix)] * 2, cell=cell + "arcsec", stokes="I",
       weighting="natural", gridder="wproject", wprojplanes=32, deconvolver="hogbom",
       niter=int(niter), gain=0.1, nsigma=float(nsigma))
for ext in ("image", "model", "residual"):
    exportfits(imagename=name + "." + ext, fitsimage=name + "-" + ext + ".fits", overwrite=True)
"""


def casa_clean(uvfits: Path, out_dir: Path, band: Band, niter: int, nsigma: float = 3.0
               ) -> dict[str, Path]:
    """CASA ``tclean`` (Högbom, Cotton-Schwab major cycles, natural weighting, w-projection)
    stopped at ``nsigma`` × its own robust residual σ or ``niter`` components:
    ``{"image", "model", "residual"}`` as FITS (see :func:`casa_image` for the set-up).
    32 w-projection planes, not CASA's automatic choice (``-1``), which dies with a
    segmentation fault in ``makePSF`` on a 12 × 60 s track (CASA 6.7)."""
    env = _casa_env(out_dir)
    name = out_dir / "casa"
    subprocess.run([str(CASA_PYTHON), "-c", _CASA_CLEAN, str(uvfits), str(out_dir / "casa.ms"),
                    str(name), str(band.npix), str(band.cell_arcsec), str(niter), str(nsigma)],
                   check=True, capture_output=True, text=True, timeout=600, env=env, cwd=out_dir)
    return {k: Path(f"{name}-{k}.fits") for k in ("image", "model", "residual")}


def band_of_image(header: Mapping[str, Any], uv: object, name: str = "demo") -> Band:
    """A Band on the grid of one of our FITS images (cell and size from its header) at ``uv``'s
    frequencies: what a reference imager is given to image the same data on the same grid."""
    return Band(name, tuple(np.asarray(uv.freq_array).ravel()),
                cell_arcsec=abs(header["CDELT2"]) * 3600, npix=int(header["NAXIS1"]))
