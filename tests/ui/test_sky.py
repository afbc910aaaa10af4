"""The sky map in a real notebook, in headless Chromium (Aladin Lite, WebGL2 in software).

A job writes an image and a catalogue with sources at known RA/Dec off the phase centre, one in
each quadrant. ``job.sky()`` must draw each marker where astropy's WCS (the same centre, field of
view and TAN projection as the map) puts it, in pixels; a click on a footprint opens its job; an
annotation made on the map survives a round trip through the server and shows in a new view of
the job; a snapshot saved from the map reopens at its place.
"""

from __future__ import annotations

import io
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from .conftest import ARTIFACTS, copy_to_docs, screenshot
from .test_notebook_widgets import open_notebook, run_all

pytestmark = pytest.mark.ui

CENTRE = (150.0, 2.0)
#: Off the phase centre, one per quadrant (degrees of RA and Dec offset).
OFFSETS = [(0.10, 0.08), (-0.12, 0.06), (-0.07, -0.11), (0.09, -0.09)]

SKY_SCRIPT = """
import os
from pathlib import Path
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from cosmic_horizons_lab.executor import args
from cosmic_horizons_lab.protocol.jobdir import JOB_DIR_ENV
n, cell = 256, 0.0015
w = WCS(naxis=2)
w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
w.wcs.crval = [args["ra"], args["dec"]]
w.wcs.crpix = [n / 2 + 1, n / 2 + 1]
w.wcs.cdelt = [-cell, cell]
ra = np.array(args["sources_ra"]); dec = np.array(args["sources_dec"])
x, y = w.world_to_pixel_values(ra, dec)
yy, xx = np.mgrid[:n, :n]
image = np.random.default_rng(1).normal(0, 0.01, (n, n))
for xi, yi in zip(x, y):
    image += np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / 8)
out = Path(os.environ[JOB_DIR_ENV]) / "outputs"
out.mkdir(exist_ok=True)
fits.PrimaryHDU(image.astype("f4"), header=w.to_header()).writeto(out / "restored.fits")
k = len(ra)
Table({"id": np.arange(k), "ra_deg": ra, "dec_deg": dec, "flux_jy": np.linspace(1, 2, k),
       "peak_jy_beam": np.linspace(1, 2, k), "snr": np.linspace(50, 80, k)}).write(out / "sources.ecsv")
Table({"kind": ["new_source"], "ra_deg": ra[:1], "dec_deg": dec[:1], "flux_jy": [1.0],
       "detail": ["no reference catalogue"]}).write(out / "anomalies.ecsv")
result = {"sources_found": k}
"""

# In the page: the map's view, canvas size, and where Aladin puts each world position.
PROJECT = """
([points]) => {
  const root = document.querySelector('.chw-sky');
  const map = root.skyMap;
  const canvas = map.aladin.view.catalogCanvas;
  return {view: map.view(), width: canvas.clientWidth, height: canvas.clientHeight,
          pixels: points.map(([ra, dec]) => map.world2pix(ra, dec))};
}
"""
# In the page: how many marker-coloured pixels (the catalogue's #00e5ff) lie within r of (x, y).
MARKER_PIXELS = """
([x, y, r]) => {
  const canvas = document.querySelector('.chw-sky').skyMap.aladin.view.catalogCanvas;
  const scale = canvas.width / canvas.clientWidth;
  const ctx = canvas.getContext('2d');
  const d = ctx.getImageData(Math.round((x - r) * scale), Math.round((y - r) * scale),
                             Math.round(2 * r * scale), Math.round(2 * r * scale)).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] < 80 && d[i + 1] > 180 && d[i + 2] > 200 && d[i + 3] > 100) n++;
  }
  return n;
}
"""


def _sky_job(server, name: str = "sky_job.py", centre: tuple[float, float] = CENTRE, wait: bool = True) -> dict:
    (server.root / name).write_text(SKY_SCRIPT)
    ra = [centre[0] + dx for dx, _ in OFFSETS]
    dec = [centre[1] + dy for _, dy in OFFSETS]
    job = server.request("POST", "jobs/submit", {"agent": "Script", "params": {"path": name, "args": {
        "ra": centre[0], "dec": centre[1], "sources_ra": ra, "sources_dec": dec}}})
    return server.wait_status(job["id"], {"COMPLETED", "FAILED"}, timeout=90) if wait else job


def _astropy_pixels(view: dict, width: float, height: float, points: list[tuple[float, float]]):
    """Screen pixels (x right, y down) of ``points`` under a TAN projection of the map's centre and scale."""
    from astropy.wcs import WCS

    scale = view["fov"] / width
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [view["ra"], view["dec"]]
    w.wcs.crpix = [width / 2 + 1, height / 2 + 1]
    w.wcs.cdelt = [-scale, -scale]  # RA grows to the left, Dec upwards (screen y grows downwards)
    x, y = w.world_to_pixel_values([p[0] for p in points], [p[1] for p in points])
    return list(zip(x, y))


def _show(page, server, name: str, code: str) -> None:
    cells = ["from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()", code]
    open_notebook(page, server, name, cells)
    run_all(page, len(cells))
    page.wait_for_selector(".chw-sky[data-first-frame-ms]", timeout=90_000)


@pytest.fixture(scope="module")
def sky_job(lab_server) -> dict:
    job = _sky_job(lab_server)
    assert job["status"] == "COMPLETED", job
    return job


@pytest.fixture(scope="module")
def sky_page(browser, lab_server, sky_job) -> Iterator[Any]:
    """One notebook showing ``job.sky()`` for every test of this module (a kernel start each costs)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    # Every request the page makes to a host other than this machine (offline first: none).
    page.outside_requests = []
    page.on("request", lambda r: page.outside_requests.append(r.url)
            if urllib.parse.urlsplit(r.url).hostname not in (None, "", "127.0.0.1", "localhost") else None)
    _show(page, lab_server, "sky", f'sky = lab.job("{sky_job["id"]}").sky()\nsky')
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "test_sky.png"))
    context.close()


def _canvas(page) -> Any:
    return page.locator(".chw-sky-map canvas").last


def test_the_sky_asks_nothing_of_the_outside_world(sky_page) -> None:
    """No CDN, no survey, no start-up ping to CDS: a blank sky behind our layers (issue 14)."""
    assert sky_page.locator(".chw-sky-map canvas").count() > 0
    assert sky_page.outside_requests == [], sky_page.outside_requests


def test_sources_are_drawn_where_the_wcs_puts_them(sky_page) -> None:
    page = sky_page
    page.wait_for_selector(".chw-sky[data-sources='4']", timeout=30_000)
    points = [(CENTRE[0] + dx, CENTRE[1] + dy) for dx, dy in OFFSETS]
    got = page.evaluate(PROJECT, [points])
    expected = _astropy_pixels(got["view"], got["width"], got["height"], points)
    quadrants = set()
    cx, cy = got["width"] / 2, got["height"] / 2
    for (ax, ay), (ex, ey) in zip(got["pixels"], expected):
        assert abs(ax - ex) < 1.0 and abs(ay - ey) < 1.0, (got, expected)
        quadrants.add((ex > cx, ey > cy))
        # ... and a marker is drawn there: the catalogue's colour within 10 px.
        assert page.evaluate(MARKER_PIXELS, [ex, ey, 10]) > 10
    assert len(quadrants) == 4
    assert page.evaluate(MARKER_PIXELS, [cx, cy, 10]) == 0  # nothing at the phase centre
    # Clicking a source shows its row: flux, SNR and the anomaly found there.
    ex, ey = expected[0]
    _canvas(page).click(position={"x": ex, "y": ey}, force=True)
    row = page.locator(".chw-sky-row")
    row.locator("tr[data-column='snr']").wait_for(timeout=10_000)
    assert "new_source" in row.inner_text() and "flux_jy" in row.inner_text()
    assert float(row.get_attribute("data-ra")) == pytest.approx(points[0][0])
    screenshot(page, "widget-sky", selector=".chw-sky")
    copy_to_docs("widget-sky")


def test_a_footprint_click_opens_its_job(sky_page, sky_job) -> None:
    page = sky_page
    # Between the sources, inside the job's footprint: the footprint's click, not a source's.
    spot = (CENTRE[0] + 0.01, CENTRE[1] + 0.01)
    x, y = page.evaluate(PROJECT, [[spot]])["pixels"][0]
    _canvas(page).click(position={"x": x, "y": y}, force=True)
    page.wait_for_selector(f".chw-sky[data-opened-job='{sky_job['id']}']", timeout=20_000)
    assert f"job {sky_job['id']} opened" in page.locator(".chw-sky-status").inner_text()


def test_an_annotation_survives_a_round_trip(sky_page, lab_server, sky_job) -> None:
    page = sky_page
    got = page.evaluate(PROJECT, [[CENTRE, (CENTRE[0], CENTRE[1] + 0.05)]])
    (x0, y0), (x1, y1) = got["pixels"]
    page.select_option(".chw-sky-shape", "circle")
    page.click(".chw-sky-mark")
    _canvas(page).click(position={"x": x0, "y": y0}, force=True)
    _canvas(page).click(position={"x": x1, "y": y1}, force=True)
    page.fill(".chw-sky-note", "bright ring")
    page.click(".chw-sky-finish")
    page.wait_for_selector(".chw-sky[data-annotations='1']", timeout=20_000)
    stored = lab_server.request("GET", f"sky/annotations?job_id={sky_job['id']}")["items"]
    assert len(stored) == 1 and stored[0]["note"] == "bright ring"
    shape = stored[0]["shape"]
    pixel = got["view"]["fov"] / got["width"]
    assert shape["type"] == "circle"
    assert abs(shape["ra"] - CENTRE[0]) < 2 * pixel and abs(shape["dec"] - CENTRE[1]) < 2 * pixel
    assert abs(shape["radius"] - 0.05) < 3 * pixel
    # A new view of the same job (the page reloaded, the cell run again) shows it.
    page.reload()
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    run_all(page, 2)
    page.wait_for_selector(".chw-sky[data-first-frame-ms]", timeout=90_000)
    page.wait_for_selector(".chw-sky[data-annotations='1']", timeout=20_000)


def test_a_snapshot_reopens(sky_page, lab_server) -> None:
    from PIL import Image

    page = sky_page
    saved_view = page.evaluate("() => document.querySelector('.chw-sky').skyMap.view()")
    page.fill(".chw-sky-snapname", "four sources")
    page.click(".chw-sky-snap")
    page.wait_for_selector(".chw-sky-snapshots option:has-text('four sources')", state="attached", timeout=20_000)
    snaps = lab_server.request("GET", "sky/snapshots")["items"]
    snap = next(s for s in snaps if s["name"] == "four sources")
    req = urllib.request.Request(lab_server.api + f"sky/snapshots/{snap['id']}/png",
                                 headers={"Authorization": f"token {lab_server.token}"})
    png = Image.open(io.BytesIO(urllib.request.urlopen(req, timeout=30).read()))
    width = page.evaluate("() => document.querySelector('.chw-sky .chw-sky-map').clientWidth")
    assert png.size[0] == pytest.approx(width, abs=2)
    # Pan away, then reopen: the map returns to the saved centre and field of view.
    page.evaluate("() => document.querySelector('.chw-sky').skyMap.goto({ra: 151.0, dec: 3.0, fov: 2.0})")
    page.select_option(".chw-sky-snapshots", label="four sources")
    page.click(".chw-sky-open")
    page.wait_for_function(
        f"""() => {{ const v = document.querySelector('.chw-sky').skyMap.view();
                  return Math.abs(v.ra - {saved_view['ra']}) < 1e-6 && Math.abs(v.dec - {saved_view['dec']}) < 1e-6
                         && Math.abs(v.fov - {saved_view['fov']}) < 1e-6; }}""",
        timeout=20_000,
    )


def test_a_source_of_anomaly_detection_shows_its_flux_snr_and_anomaly_score(page, lab_server) -> None:
    """AnomalyDetection's catalogue carries a per-source ``anomaly_score``: |S − S_ref| / local σ, the
    reference's flux where a reference source matches, else 0 (checked here with astropy's own
    cross-match). A click on the source's marker shows its row: flux, SNR and that score."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    image = _sky_job(lab_server, "sky_anomaly_image.py")
    assert image["status"] == "COMPLETED", image
    points = [(CENTRE[0] + dx, CENTRE[1] + dy) for dx, dy in OFFSETS]
    reference = [{"ra_deg": points[1][0], "dec_deg": points[1][1], "flux_jy": 3.0}]
    radius_arcsec = 20.0
    job = lab_server.request("POST", "jobs/submit", {
        "agent": "AnomalyDetection", "depends_on": [image["id"]],
        "params": {"reference_sources": reference, "match_radius_arcsec": radius_arcsec}})
    done = lab_server.wait_status(job["id"], {"COMPLETED", "FAILED"}, timeout=180)
    assert done["status"] == "COMPLETED", done
    req = urllib.request.Request(lab_server.api + f"jobs/{job['id']}/outputs/sources.ecsv",
                                 headers={"Authorization": f"token {lab_server.token}"})
    table = Table.read(urllib.request.urlopen(req, timeout=30).read().decode(), format="ascii.ecsv")
    assert len(table) == 4 and "anomaly_score" in table.colnames

    found = SkyCoord(table["ra_deg"], table["dec_deg"], unit="deg")
    ref = SkyCoord([r["ra_deg"] for r in reference], [r["dec_deg"] for r in reference], unit="deg")
    idx, sep, _ = found.match_to_catalog_sky(ref)
    matched = sep < radius_arcsec * u.arcsec
    assert matched.sum() == 1
    ref_flux = [r["flux_jy"] for r in reference]
    # the flux's noise: the local σ, times sqrt(source area / beam area) for a resolved source
    # (Condon 1997); this image has no beam in its header, so its beam is one pixel
    beam_fwhm_sq = 4 * np.log(2) / np.pi
    for row, i, m in zip(table, idx, matched):
        noise = row["local_rms"] * np.sqrt(max(row["maj_px"] * row["min_px"] / beam_fwhm_sq, 1.0))
        expected = abs(row["flux_jy"] - (ref_flux[i] if m else 0.0)) / noise
        assert row["anomaly_score"] == pytest.approx(expected, rel=1e-9)

    _show(page, lab_server, "sky-anomaly", f'sky = lab.job("{job["id"]}").sky()\nsky')
    page.wait_for_selector(".chw-sky[data-sources='4']", timeout=30_000)
    for row in (table[int(matched.argmax())], table[int((~matched).argmax())]):
        x, y = page.evaluate(PROJECT, [[(float(row["ra_deg"]), float(row["dec_deg"]))]])["pixels"][0]
        _canvas(page).click(position={"x": x, "y": y}, force=True)
        shown = page.locator(f".chw-sky-row[data-ra='{float(row['ra_deg'])}']")
        shown.locator("tr[data-column='anomaly_score']").wait_for(timeout=10_000)
        for column in ("flux_jy", "snr", "anomaly_score"):
            text = shown.locator(f"tr[data-column='{column}'] td").inner_text()
            assert float(text) == pytest.approx(float(row[column]), rel=1e-3, abs=1e-4), (column, text)
    screenshot(page, "widget-sky-anomaly", selector=".chw-sky")
