"""The sidebar's Sky panel in a real JupyterLab: the coverage of the user's results, live, and a
click on a footprint that opens the job's row in the jobs panel."""

from __future__ import annotations

import pytest

from .conftest import copy_to_docs, open_lab, open_sidebar, screenshot
from .test_sky import _sky_job

pytestmark = pytest.mark.ui

ELSEWHERE = (30.0, -20.0)


def open_sky(page):
    return open_sidebar(page, "cosmic-horizons-sky")


def test_the_sky_panel_shows_coverage_live_and_opens_jobs(page, lab_server) -> None:
    first = _sky_job(lab_server, "sky_side1.py")
    assert first["status"] == "COMPLETED"
    open_lab(page, lab_server)
    open_sidebar(page)  # the jobs panel exists (and lists the job) before the sky opens it
    open_sky(page)
    page.wait_for_selector("#cosmic-horizons-sky[data-footprints]", timeout=60_000)
    before = int(page.locator("#cosmic-horizons-sky").get_attribute("data-footprints"))
    # Live: a job that completes now, elsewhere on the sky, is drawn without a reload.
    second = _sky_job(lab_server, "sky_side2.py", centre=ELSEWHERE, wait=False)
    page.wait_for_function(
        f"() => Number(document.querySelector('#cosmic-horizons-sky').dataset.footprints) > {before}",
        timeout=90_000)
    moc = lab_server.request("GET", "sky/coverage")
    assert moc, "the coverage is not empty"
    # Click-through: the new job's footprint opens its row in the jobs panel.
    page.evaluate(f"() => document.querySelector('#cosmic-horizons-sky').skyMap.goto("
                  f"{{ra: {ELSEWHERE[0]}, dec: {ELSEWHERE[1]}, fov: 0.8}})")
    page.wait_for_timeout(300)
    x, y = page.evaluate(f"() => document.querySelector('#cosmic-horizons-sky').skyMap.world2pix({ELSEWHERE[0]}, {ELSEWHERE[1]})")
    screenshot(page, "sidebar-sky")
    page.locator("#cosmic-horizons-sky .ch-sky-map canvas").last.click(position={"x": x, "y": y}, force=True)
    # The jobs panel comes forward (the Sky panel behind it): the job's row is open there.
    page.wait_for_selector(f"#cosmic-horizons-sky[data-opened-job='{second['id']}']", state="attached",
                           timeout=20_000)
    page.wait_for_selector(f"#cosmic-horizons-sidebar .ch-job.ch-expanded[data-job-id='{second['id']}']", timeout=20_000)
    copy_to_docs("sidebar-sky")


def test_lab_sky_shows_a_job_that_completes_later(page, lab_server) -> None:
    """Live in the notebook: ``lab.sky()`` is on screen when a job starts; when it completes, its
    image and sources appear on the map without the cell being run again."""
    from .test_notebook_widgets import open_notebook, run_all

    cells = ["from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()\nsky = lab.sky()\nsky"]
    open_notebook(page, lab_server, "sky_live", cells)
    run_all(page, len(cells))
    page.wait_for_selector(".chw-sky[data-first-frame-ms]", timeout=90_000)
    before = int(page.locator(".chw-sky").get_attribute("data-sources"))
    job = _sky_job(lab_server, "sky_live.py", centre=(80.0, 10.0), wait=False)
    page.wait_for_function(f"() => Number(document.querySelector('.chw-sky').dataset.sources) >= {before + 4}",
                           timeout=90_000)
    assert lab_server.request("GET", f"jobs/{job['id']}")["status"] == "COMPLETED"
    # Its image is a layer of the map, fetched from the extension's outputs route.
    layers = page.evaluate("() => [...document.querySelector('.chw-sky').skyMap.images.keys()]")
    assert any(f"jobs/{job['id']}/outputs/restored.fits" in url for url in layers), layers
