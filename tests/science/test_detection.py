"""Source finding and anomaly catalogues on images with known content."""

import numpy as np
import pytest

from cosmic_horizons_lab.science.clean import Beam, fit_beam
from cosmic_horizons_lab.science.detection import Image, anomalies, find_sources, robust_sigma


def _image(sources, sigma=0.01, n=128, fwhm=4.0, seed=0):
    from astropy.wcs import WCS

    rng = np.random.default_rng(seed)
    data = sigma * rng.standard_normal((n, n))
    yy, xx = np.mgrid[:n, :n]
    s = fwhm / np.sqrt(8 * np.log(2))
    for x, y, peak in sources:
        data += peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s**2))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [150.0, 30.0]
    w.wcs.cdelt = [-1 / 3600, 1 / 3600]
    w.wcs.crpix = [n // 2 + 1, n // 2 + 1]
    area = np.pi * fwhm * fwhm / (4 * np.log(2))
    return Image(data=data, wcs=w, beam_area_pixels=area, beam_fwhm_deg=fwhm / 3600, header=None)


def test_robust_sigma_ignores_bright_sources():
    img = _image([(30, 30, 50.0), (90, 90, 20.0)], sigma=0.01)
    assert robust_sigma(img.data) == pytest.approx(0.01, rel=0.05)
    assert img.data.std() > 0.1  # the naive estimate is far off


def test_finds_sources_with_positions_and_fluxes():
    truth = [(30.3, 40.7, 1.0), (90.0, 85.5, 0.3), (64.6, 100.2, 0.08)]
    img = _image(truth)
    table, sigma = find_sources(img, detect_sigma=5)
    assert len(table) == 3
    for (x, y, peak), row in zip(truth, table):  # brightest first
        assert abs(row["x"] - x) < 0.2 and abs(row["y"] - y) < 0.2
        assert abs(row["peak_jy_beam"] - peak) < 3 * sigma  # the peak pixel carries its noise
        if peak / sigma > 20:  # a point source: integrated flux = peak, to within the
            # noise of a sum over ~200 pixels divided by an 18-pixel beam (~0.01)
            assert row["flux_jy"] == pytest.approx(peak, rel=0.05, abs=3 * 0.01)
    ra, _ = img.wcs.pixel_to_world_values(truth[0][0], truth[0][1])
    assert table["ra_deg"][0] == pytest.approx(float(ra), abs=0.2 / 3600)


def test_anomalies_against_a_reference():
    from astropy.table import Table

    img = _image([(30, 40, 1.0), (90, 85, 0.3), (64, 100, 0.2)])
    table, _ = find_sources(img)
    ra, dec = img.wcs.pixel_to_world_values([30, 90, 10], [40, 85, 10])
    # source 1 as catalogued; source 2 at half its flux; source 3 not catalogued; one catalogued
    # source (at pixel 10, 10) absent from the image
    ref = Table({"ra_deg": ra, "dec_deg": dec, "flux_jy": [1.0, 0.15, 0.5]})
    out = anomalies(table, ref, match_radius_deg=4 / 3600)
    kinds = sorted(out["kind"])
    assert kinds == ["flux_change", "missing_source", "new_source"]


def test_beam_fit_recovers_an_elliptical_gaussian():
    truth = Beam(major=8.0, minor=5.0, pa=np.radians(30))
    fitted = fit_beam(truth.image(64, 64))
    assert fitted.major == pytest.approx(8.0, rel=0.02)
    assert fitted.minor == pytest.approx(5.0, rel=0.02)
    assert fitted.pa == pytest.approx(np.radians(30), abs=np.radians(1))


def test_noise_map_follows_noise_that_changes_across_the_image():
    """Noise rising fourfold from the centre to the corners (as in an image corrected for the
    primary beam), with sources at the centre and the edges: the map follows the true σ,
    the finder finds the sources and no more, where one global σ reports many false ones."""
    from cosmic_horizons_lab.science.background import noise_maps

    sigma, n, fwhm = 0.01, 256, 4.0
    truth = [(128.3, 120.2, 0.1), (40.3, 60.2, 0.4), (60.8, 200.4, 0.5), (200.2, 50.7, 0.8),
             (210.6, 220.1, 2.0)]
    img = _image(truth, sigma=0.0, n=n, fwhm=fwhm)
    yy, xx = np.mgrid[:n, :n]
    true_sigma = sigma * (1 + 3 * ((xx - n / 2) ** 2 + (yy - n / 2) ** 2) / (2 * (n / 2) ** 2))
    img.data += true_sigma * _smooth_noise(np.random.default_rng(5), (n, n), fwhm)
    maps = noise_maps(img.data, beam_fwhm_pixels=fwhm)
    ratio = maps.rms / true_sigma
    assert np.percentile(ratio, 5) > 0.8 and np.percentile(ratio, 95) < 1.2, np.percentile(ratio, [5, 95])
    # the background (zero here) to within its boxes' sampling error (a box holds ~90 beams:
    # ~0.13σ for the median of one box)
    assert abs(np.mean(maps.background / true_sigma)) < 0.05
    assert np.percentile(np.abs(maps.background / true_sigma), 95) < 0.3
    table, _ = find_sources(img)
    near = [min(np.hypot(r["x"] - x, r["y"] - y) for x, y, _ in truth) < fwhm for r in table]
    assert sum(near) == len(truth) and len(table) - sum(near) <= 1, table
    global_table, _ = find_sources(img, sigma=robust_sigma(img.data))
    assert len(global_table) > len(truth) + 5  # what one σ for the whole image does


def _smooth_noise(rng, shape, fwhm):
    """Unit-σ Gaussian noise correlated over a beam of ``fwhm`` pixels, as in an image."""
    from scipy import ndimage

    raw = ndimage.gaussian_filter(rng.standard_normal(shape), fwhm / np.sqrt(8 * np.log(2)))
    return raw / raw.std()


def test_resolved_source_gives_its_integrated_flux_and_a_blend_two_sources():
    """A Gaussian source three beams wide: one source whose flux is its integral (peak ×
    its area over the beam's), not its peak. Two point sources two beams apart in one
    island: two sources at their positions."""
    from astropy.wcs import WCS

    n, fwhm, sigma = 128, 4.0, 0.002
    yy, xx = np.mgrid[:n, :n]
    rng = np.random.default_rng(8)
    data = sigma * _smooth_noise(rng, (n, n), fwhm)
    s_ext = 3 * fwhm / np.sqrt(8 * np.log(2))
    data += 0.2 * np.exp(-((xx - 40.4) ** 2 + (yy - 60.3) ** 2) / (2 * s_ext**2))  # resolved
    s_pt = fwhm / np.sqrt(8 * np.log(2))
    for x, y, peak in ((90.2, 90.6, 0.5), (98.1, 90.4, 0.3)):  # 2 beams apart
        data += peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s_pt**2))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval, w.wcs.cdelt, w.wcs.crpix = [10.0, -20.0], [-1 / 3600, 1 / 3600], [65, 65]
    img = Image(data=data, wcs=w, beam_area_pixels=np.pi * fwhm**2 / (4 * np.log(2)),
                beam_fwhm_deg=fwhm / 3600, header=None)
    table, _ = find_sources(img)
    assert len(table) == 3
    ext_row = table[np.argmin(np.hypot(table["x"] - 40.4, table["y"] - 60.3))]
    assert ext_row["flux_jy"] == pytest.approx(0.2 * 9, rel=0.03)  # (3 beams)² × the peak
    assert ext_row["maj_px"] == pytest.approx(3 * fwhm, rel=0.05)
    for x, y, peak in ((90.2, 90.6, 0.5), (98.1, 90.4, 0.3)):
        row = table[np.argmin(np.hypot(table["x"] - x, table["y"] - y))]
        assert np.hypot(row["x"] - x, row["y"] - y) < 0.1
        assert row["flux_jy"] == pytest.approx(peak, rel=0.03)
