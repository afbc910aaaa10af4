"""Source finding held to PyBDSF on images of a pyuvsim sky, and cross-matching held to
astropy and to a brute-force search.

The sky: nine point sources from 10σ to 1000σ of the image's thermal noise, in all four
quadrants, observed by pyuvsim (VLA D configuration, 2 h) with Gaussian noise of known σ
(``external.py``). Two restored images of the same data: WSClean's and ours (the
ImageReconstruction agent, as a job runs it); and WSClean's and our images of a bright
noiseless field, where the "noise" is deconvolution error. On each, our catalogue must hold every
source, agree with PyBDSF's (``bdsf.process_image`` with its defaults, on the same FITS
file) to 0.1 pixel and 3 % in flux, and add at most one source that is not there.
"""

from __future__ import annotations

import numpy as np
import pytest

from cosmic_horizons_lab.science.detection import find_sources, read_image

from . import external as ext
from .conftest import run_job

SNRS = (10, 14, 20, 30, 50, 100, 200, 500, 1000)
# the first test builds the module's images (pyuvsim, WSClean, our imager, PyBDSF): about a
# minute and a half on an idle 2-core machine, more while other work shares it
pytestmark = pytest.mark.timeout(600)
SIGMA_VIS_JY = 1.0


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """Restored images with their true skies, and PyBDSF's catalogues of them: WSClean's and
    ours of the noisy field, and WSClean's and ours of a noiseless bright field (``external.field``:
    six sources of 0.7–2.5 Jy, a dynamic range of thousands, where what is left is CLEAN's
    and the gridding's errors, not noise)."""
    band = ext.L_BAND
    root = tmp_path_factory.mktemp("detect")
    template = ext.empty_observation(band, n_times=12, integration_s=600.0)
    sigma_image = ext.image_noise(template, SIGMA_VIS_JY)
    sources = ext.snr_field(band, sigma_image, SNRS)
    uv = ext.add_noise(ext.observe(template, sources), SIGMA_VIS_JY)
    ms, uvfits = ext.write(uv, root / "obs.ms"), ext.write(uv, root / "obs.uvfits")
    bright = ext.field(band)
    bright_uv = ext.observe(template, bright)
    bright_ms, bright_uvfits = ext.write(bright_uv, root / "bright.ms"), ext.write(bright_uv, root / "bright.uvfits")
    images = {"wsclean": (ext.wsclean(ms, root / "wsclean", band, niter=5000)["image"], sources),
              "wsclean-noiseless": (ext.wsclean(bright_ms, root / "bright", band, niter=2000)["image"],
                                    bright)}
    rc, _ = run_job(root / "img", "ImageReconstruction",
                    {"npix": band.npix, "cell_arcsec": band.cell_arcsec, "niter": 5000},
                    {"id": "ext", "path": str(uvfits), "format": "uvfits"})
    if rc == 0:
        images["ours"] = (root / "img" / "outputs" / "restored.fits", sources)
    rc_bright, _ = run_job(root / "img-bright", "ImageReconstruction",
                           {"npix": band.npix, "cell_arcsec": band.cell_arcsec, "niter": 5000},
                           {"id": "ext-bright", "path": str(bright_uvfits), "format": "uvfits"})
    if rc_bright == 0:
        images["ours-noiseless"] = (root / "img-bright" / "outputs" / "restored.fits", bright)
    rc = rc or rc_bright
    catalogues = dict(zip(images, ext.pybdsf([path for path, _ in images.values()])))
    return {"band": band, "sigma_image": sigma_image, "images": images, "pybdsf": catalogues,
            "imaging_rc": rc}


def _image_and_catalogue(restored, which):
    if which not in restored["images"]:
        pytest.fail(f"our ImageReconstruction failed (exit code {restored['imaging_rc']})")
    path, sources = restored["images"][which]
    img = read_image(path)
    table, sigma = find_sources(img)
    return img, sources, table, sigma


def _beam_fwhm_px(img) -> float:
    return float(np.sqrt(img.beam_area_pixels * 4 * np.log(2) / np.pi))


IMAGES = ["wsclean", "ours", "wsclean-noiseless", "ours-noiseless"]


@pytest.mark.parametrize("which", IMAGES)
def test_every_source_is_found_where_pybdsf_finds_it(restored, which):
    """Every source at 10σ or more: found, within 0.1 pixel and 3 % in flux of PyBDSF's."""
    img, sources, table, sigma = _image_and_catalogue(restored, which)
    ref = restored["pybdsf"][which]
    noisy = not which.endswith("noiseless")
    if noisy:  # the image's noise is the thermal noise put in (PyBDSF's clipped rms says so too)
        # (without noise, what is left is deconvolution error, not Gaussian: the MAD and
        # PyBDSF's clipped standard deviation then differ by ~10 %, and neither is "right")
        assert ref["rms"] == pytest.approx(restored["sigma_image"], rel=0.2)
        assert sigma == pytest.approx(ref["rms"], rel=0.1)
    tx, ty = img.wcs.world_to_pixel_values([s.ra_deg for s in sources], [s.dec_deg for s in sources])
    bx, by = img.wcs.world_to_pixel_values(ref["ra_deg"], ref["dec_deg"])
    bflux = np.asarray(ref["total_flux"])
    beam = _beam_fwhm_px(img)
    noise = restored["sigma_image"] if noisy else ref["rms"]
    rows = []
    for s, x, y in zip(sources, tx, ty):
        if s.flux_jy < 10 * noise * (1 - 1e-9):
            continue
        d = np.hypot(np.asarray(table["x"]) - x, np.asarray(table["y"]) - y)
        i = int(np.argmin(d))
        assert d[i] < beam / 2, (s, "not found")
        db = np.hypot(bx - x, by - y)
        j = int(np.argmin(db))
        assert db[j] < beam / 2, (s, "PyBDSF did not find it")
        dpos = float(np.hypot(table["x"][i] - bx[j], table["y"][i] - by[j]))
        dflux = float(table["flux_jy"][i] / bflux[j] - 1)
        rows.append((s.flux_jy / ref["rms"], dpos, dflux))
        assert dpos < 0.1, (s, dpos)
        assert abs(dflux) < 0.03, (s, dflux)
    print(which, [f"{snr:.0f}σ: {d:.3f} px, {100 * f:+.2f} %" for snr, d, f in rows])
    assert len(rows) == len(sources)  # every source of the field was at 10σ or more


@pytest.mark.parametrize("which", IMAGES)
def test_at_most_one_spurious_source(restored, which):
    """At the 5σ default, no more than one source that is not on the sky."""
    img, sources, table, _ = _image_and_catalogue(restored, which)
    tx, ty = img.wcs.world_to_pixel_values([s.ra_deg for s in sources], [s.dec_deg for s in sources])
    beam = _beam_fwhm_px(img)
    d = np.hypot(np.asarray(table["x"])[:, None] - tx[None, :],
                 np.asarray(table["y"])[:, None] - ty[None, :]).min(axis=1)
    spurious = table[d > beam]
    assert len(spurious) <= 1, spurious
    assert len(table) - len(spurious) >= len(sources)


# --- cross-matching ------------------------------------------------------------------------

def _sky(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform on the sphere (deg)."""
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    return ra, dec


def _offset(ra, dec, dist_deg, pa_deg):
    """Great-circle offsets of (ra, dec) by dist at position angle pa (all deg)."""
    r0, d0, d, pa = (np.radians(np.asarray(v, float)) for v in (ra, dec, dist_deg, pa_deg))
    dec2 = np.arcsin(np.sin(d0) * np.cos(d) + np.cos(d0) * np.sin(d) * np.cos(pa))
    ra2 = r0 + np.arctan2(np.sin(pa) * np.sin(d) * np.cos(d0), np.cos(d) - np.sin(d0) * np.sin(dec2))
    return np.degrees(ra2) % 360.0, np.degrees(dec2)


def test_tree_match_agrees_with_astropy_and_brute_force():
    """Nearest reference within the radius, for queries across RA 0/360, at the pole and in
    open sky, as astropy's ``match_to_catalog_sky`` and a haversine over every pair say."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from cosmic_horizons_lab.science.crossmatch import nearest

    rng = np.random.default_rng(3)
    ref_ra, ref_dec = _sky(20_000, rng)
    # clusters where naive matching breaks: astride RA 0 and round the north pole
    cra, cdec = _offset(np.zeros(400), np.full(400, 10.0), rng.uniform(0, 0.5, 400), rng.uniform(0, 360, 400))
    pra, pdec = _offset(np.zeros(400), np.full(400, 90.0), rng.uniform(0, 0.5, 400), rng.uniform(0, 360, 400))
    ref_ra, ref_dec = np.concatenate([ref_ra, cra, pra]), np.concatenate([ref_dec, cdec, pdec])
    radius = 0.05
    pick = rng.choice(len(ref_ra), 250, replace=False)
    q_ra, q_dec = _offset(ref_ra[pick], ref_dec[pick], rng.uniform(0, 1.5 * radius, 250),
                          rng.uniform(0, 360, 250))
    o_ra, o_dec = _sky(50, rng)
    q_ra, q_dec = np.concatenate([q_ra, o_ra]), np.concatenate([q_dec, o_dec])

    got = nearest(q_ra, q_dec, ref_ra, ref_dec, radius)

    idx, sep, _ = SkyCoord(q_ra * u.deg, q_dec * u.deg).match_to_catalog_sky(
        SkyCoord(ref_ra * u.deg, ref_dec * u.deg))
    within = sep.deg <= radius
    assert np.array_equal(got.matched, within)
    assert np.array_equal(got.index[within], idx[within])
    assert np.allclose(got.separation_deg[within], sep.deg[within], rtol=0, atol=1e-9)
    assert 100 < within.sum() < len(q_ra)  # both outcomes are exercised

    r1, d1, r2, d2 = (np.radians(v) for v in (q_ra, q_dec, ref_ra, ref_dec))
    for i in range(len(q_ra)):  # brute force: every pair
        h = np.sin((d2 - d1[i]) / 2) ** 2 + np.cos(d1[i]) * np.cos(d2) * np.sin((r2 - r1[i]) / 2) ** 2
        ang = np.degrees(2 * np.arcsin(np.sqrt(h)))
        j = int(np.argmin(ang))
        assert got.index[i] == (j if ang[j] <= radius else -1), i
        if ang[j] <= radius:
            assert got.separation_deg[i] == pytest.approx(ang[j], abs=1e-9)


def test_anomalies_against_a_large_reference():
    """300 found sources against a 200,000-row all-sky reference (1.8 million in
    ``benchmarks/bench_detection_references.py``): new, changed and missing sources are
    exactly those a brute-force search over the image's footprint gives."""
    from astropy.table import Table
    from astropy.wcs import WCS

    from cosmic_horizons_lab.science.detection import Image, anomalies

    rng = np.random.default_rng(7)
    n, cell = 512, 4.0 / 3600
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [0.2, 40.0]  # the image straddles RA 0
    w.wcs.cdelt = [-cell, cell]
    w.wcs.crpix = [n / 2 + 1, n / 2 + 1]
    img = Image(data=np.zeros((n, n)), wcs=w, beam_area_pixels=20.0, beam_fwhm_deg=4 * cell, header=None)
    # 300 found sources in the image, 260 of them catalogued (30 of those at twice the flux)
    fx, fy = rng.uniform(5, n - 5, 300), rng.uniform(5, n - 5, 300)
    fra, fdec = w.pixel_to_world_values(fx, fy)
    fflux = rng.uniform(0.01, 1.0, 300)
    found = Table({"ra_deg": fra, "dec_deg": fdec, "flux_jy": fflux})
    radius = 3 * cell
    jr, jd = _offset(fra[:260], fdec[:260], rng.uniform(0, 0.5 * radius, 260), rng.uniform(0, 360, 260))
    jflux = fflux[:260].copy()
    jflux[:30] *= 2.0
    # 40 catalogued sources in the image and not found; half of them below the detection limit
    mx, my = rng.uniform(0, n - 1, 40), rng.uniform(0, n - 1, 40)
    mra, mdec = w.pixel_to_world_values(mx, my)
    mflux = np.where(np.arange(40) < 20, 0.5, 0.001)
    sra, sdec = _sky(200_000, rng)
    ref = Table({"ra_deg": np.concatenate([jr, mra, sra]), "dec_deg": np.concatenate([jd, mdec, sdec]),
                 "flux_jy": np.concatenate([jflux, mflux, rng.uniform(0.003, 2.0, sra.size)])})

    out = anomalies(found, ref, match_radius_deg=radius, flux_tolerance=0.2, footprint=img,
                    min_flux_jy=0.005)

    # the truth by brute force: every found source against every reference row, and every
    # reference row the image holds against every found source
    def sep(ra1, dec1, ra2, dec2):
        r1, d1, r2, d2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
        h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
        return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))

    rra, rdec, rflux = (np.asarray(ref[c]) for c in ("ra_deg", "dec_deg", "flux_jy"))
    new, changed = 0, 0
    for i in range(len(found)):
        d = sep(fra[i], fdec[i], rra, rdec)
        j = int(np.argmin(d))
        if d[j] > radius:
            new += 1
        elif abs(fflux[i] - rflux[j]) > 0.2 * rflux[j]:
            changed += 1
    px, py = w.world_to_pixel_values(rra, rdec)
    inside = (px >= -0.5) & (px < n - 0.5) & (py >= -0.5) & (py < n - 0.5) & (rflux >= 0.005)
    missing = sum(sep(rra[k], rdec[k], fra, fdec).min() > radius for k in np.flatnonzero(inside))
    kinds = list(out["kind"])
    assert (kinds.count("new_source"), kinds.count("flux_change"), kinds.count("missing_source")) \
        == (new, changed, missing)
    # what was planted is there (a planted missing source may fall by chance near a found one)
    assert new >= 40 and changed >= 30 and missing >= 15


def test_agent_against_a_reference_file_of_the_whole_sky(restored, tmp_path):
    """The AnomalyDetection job on WSClean's image with a FITS reference of 200,000 sources
    over the whole sky: the field's sources, and one bright catalogued source the sky does
    not have. Only that one is missing; the faint catalogue sources that happen to fall in
    the image (below its 5σ) are not; nothing is new."""
    from astropy.table import Table

    path, sources = restored["images"]["wsclean"]
    img = read_image(path)
    rng = np.random.default_rng(11)
    sra, sdec = _sky(200_000, rng)
    gone_ra, gone_dec = img.wcs.pixel_to_world_values(40.0, 60.0)
    ref = Table({"ra_deg": np.concatenate([[s.ra_deg for s in sources], [gone_ra], sra]),
                 "dec_deg": np.concatenate([[s.dec_deg for s in sources], [gone_dec], sdec]),
                 "flux_jy": np.concatenate([[s.flux_jy for s in sources], [1.0],
                                            rng.uniform(0.0025, 0.02, sra.size)])})
    ref.write(tmp_path / "nvss.fits")
    rc, records = run_job(tmp_path / "det", "AnomalyDetection",
                          {"reference_catalog": str(tmp_path / "nvss.fits"), "flux_tolerance": 0.5},
                          {"id": "img", "path": str(path), "format": "fits"})
    assert rc == 0
    found = Table.read(tmp_path / "det" / "outputs" / "anomalies.ecsv")
    kinds = list(found["kind"])
    assert kinds.count("new_source") <= 1  # the one spurious source allowed above
    assert [k for k in kinds if k != "new_source"] == ["missing_source"], found
    missing = found[found["kind"] == "missing_source"]
    assert missing["ra_deg"][0] == pytest.approx(float(gone_ra), abs=1e-9)
    result = records[-1]["result"]
    assert result["sources_found"] == len(sources) + kinds.count("new_source")
    assert result["anomalies_by_kind"]["missing_source"] == 1
