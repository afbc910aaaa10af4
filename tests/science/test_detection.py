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
    ra, dec = img.wcs.pixel_to_world_values(truth[0][0], truth[0][1])
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
