"""The sky API against a real server extension: footprints and coverage read from the jobs'
images (checked against astropy's WCS and mocpy), annotations with their region files (read back
by astropy-regions), snapshots, and the 4xx that name the bad field."""

from __future__ import annotations

import base64
import io
import math

import pytest

# A Script job that writes a FITS image with a known SIN projection: its footprint is the image's extent.
IMAGE_SCRIPT = """
import os
from pathlib import Path
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from cosmic_horizons_lab.executor import args
from cosmic_horizons_lab.protocol.jobdir import JOB_DIR_ENV
w = WCS(naxis=2)
w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
w.wcs.crval = [args["ra"], args["dec"]]
w.wcs.crpix = [args["n"] / 2 + 1, args["n"] / 2 + 1]
w.wcs.cdelt = [-args["cell"], args["cell"]]
out = Path(os.environ[JOB_DIR_ENV]) / "outputs"
out.mkdir(exist_ok=True)
fits.PrimaryHDU(np.zeros((args["n"], args["n"]), "f4"), header=w.to_header()).writeto(out / "restored.fits")
result = {"ok": True}
"""


def _expected_footprint(ra: float, dec: float, n: int, cell: float) -> tuple[float, float, float]:
    """What astropy says: the centre pixel's position and the farthest corner's distance."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [n / 2 + 1, n / 2 + 1]
    w.wcs.cdelt = [-cell, cell]
    centre = w.pixel_to_world((n - 1) / 2, (n - 1) / 2)
    corners = w.pixel_to_world([-0.5, n - 0.5, -0.5, n - 0.5], [-0.5, -0.5, n - 0.5, n - 0.5])
    return centre.ra.deg, centre.dec.deg, max(centre.separation(c).deg for c in corners)


async def _image_job(api, script, ra: float, dec: float, n: int = 64, cell: float = 0.01) -> dict:
    path = script(IMAGE_SCRIPT, name="image_job.py")
    code, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path, "args": {
        "ra": ra, "dec": dec, "n": n, "cell": cell}}})
    assert code == 201, job
    done = await api.wait_for(job["id"], timeout=60)
    assert done["status"] == "COMPLETED", done
    return done


async def test_footprints_and_coverage_come_from_the_images(api, script):
    import astropy.units as u
    from mocpy import MOC

    fields = [(150.0, 2.0, 64, 0.01), (210.5, -30.0, 32, 0.02)]
    jobs = [await _image_job(api, script, *f) for f in fields]
    code, body, _ = await api.get("sky/footprints")
    assert code == 200, body
    by_id = {f["job_id"]: f for f in body["items"]}
    for job, (ra, dec, n, cell) in zip(jobs, fields):
        fp = by_id[job["id"]]
        era, edec, eradius = _expected_footprint(ra, dec, n, cell)
        assert fp["basis"] == "image" and fp["status"] == "COMPLETED"
        assert fp["ra_deg"] == pytest.approx(era, abs=1e-9) and fp["dec_deg"] == pytest.approx(edec, abs=1e-9)
        assert fp["radius_deg"] == pytest.approx(eradius, rel=1e-9)

    code, moc_json, _ = await api.get("sky/coverage", params={"order": "9"})
    assert code == 200, moc_json
    moc = MOC.from_json({int(k): v for k, v in moc_json.items()})
    for ra, dec, _, _ in fields:
        assert moc.contains_lonlat(ra * u.deg, dec * u.deg)[0]
    assert not moc.contains_lonlat(30 * u.deg, 60 * u.deg)[0]
    # The MOC holds every order-9 cell the cones touch: its area lies between the cones' and that
    # of the cones widened by one cell's diagonal.
    cell = math.degrees(math.sqrt(2 * 4 * math.pi / (12 * 4**9)))
    radii = [by_id[j["id"]]["radius_deg"] for j in jobs]
    area = moc.sky_fraction * 4 * math.pi
    assert sum(2 * math.pi * (1 - math.cos(math.radians(r))) for r in radii) < area
    assert area < sum(2 * math.pi * (1 - math.cos(math.radians(r + cell))) for r in radii)

    # Filters: by status and agent (nothing FAILED), by date (nothing yet tomorrow).
    code, empty, _ = await api.get("sky/coverage", params={"status": "FAILED"})
    assert code == 200 and empty == {}
    code, none, _ = await api.get("sky/footprints", params={"agent": "AlphaCal"})
    assert code == 200 and none["items"] == []
    code, later, _ = await api.get("sky/footprints", params={"from_date": "2999-01-01"})
    assert code == 200 and later["items"] == []


@pytest.mark.parametrize("query, field", [({"status": "DONE"}, "status"), ({"order": "30"}, "order"),
                                          ({"from_date": "yesterday"}, "from_date")])
async def test_bad_coverage_queries_name_the_field(api, query, field):
    code, body, _ = await api.get("sky/coverage", params=query)
    assert code == 400 and body["field"] == field, body


async def test_annotations_round_trip_and_export_as_regions(api, script):
    from regions import CircleSkyRegion, PolygonSkyRegion, Regions

    job = await _image_job(api, script, 150.0, 2.0)
    circle = {"job_id": job["id"], "shape": {"type": "circle", "ra": 150.1, "dec": 2.05, "radius": 0.02},
              "note": "a new source?"}
    polygon = {"job_id": job["id"], "shape": {"type": "polygon", "vertices": [[149.9, 1.9], [150.0, 1.9], [150.0, 2.0]]},
               "note": "sidelobe"}
    code, a, _ = await api.post("sky/annotations", circle)
    assert code == 201 and a["shape"] == circle["shape"] and a["note"] == "a new source?", a
    code, b, _ = await api.post("sky/annotations", polygon)
    assert code == 201, b
    code, listed, _ = await api.get("sky/annotations", params={"job_id": job["id"]})
    assert [x["id"] for x in listed["items"]] == [a["id"], b["id"]]

    for fmt in ("ds9", "crtf"):
        resp = await api.fetch("cosmic-horizons", "api", "sky", "annotations", "export",
                               params={"format": fmt, "job_id": job["id"]})
        assert resp.headers["Content-Type"].startswith("text/plain")
        regions = Regions.parse(resp.body.decode(), format=fmt)
        assert isinstance(regions[0], CircleSkyRegion) and isinstance(regions[1], PolygonSkyRegion)
        assert regions[0].center.ra.deg == pytest.approx(150.1, abs=1e-5)
        assert regions[0].radius.to("deg").value == pytest.approx(0.02, abs=1e-5)
        assert "a new source?" in resp.body.decode()

    code, gone, _ = await api.delete(f"sky/annotations/{a['id']}")
    assert code == 200 and gone["id"] == a["id"]
    code, listed, _ = await api.get("sky/annotations", params={"job_id": job["id"]})
    assert [x["id"] for x in listed["items"]] == [b["id"]]
    code, again, _ = await api.delete(f"sky/annotations/{a['id']}")
    assert code == 404 and again["field"] == "id"


@pytest.mark.parametrize("body, status, field", [
    ({"shape": {"type": "point", "ra": 1, "dec": 2}}, 400, "job_id"),
    ({"job_id": "JOB", "shape": {"type": "point", "ra": 400, "dec": 2}}, 422, "shape.ra"),
    ({"job_id": "JOB", "shape": {"type": "point", "ra": 10, "dec": -91}}, 422, "shape.dec"),
    ({"job_id": "JOB", "shape": {"type": "circle", "ra": 10, "dec": 0}}, 400, "shape.radius"),
    ({"job_id": "JOB", "shape": {"type": "circle", "ra": 10, "dec": 0, "radius": 0}}, 422, "shape.radius"),
    ({"job_id": "JOB", "shape": {"type": "polygon", "vertices": [[1, 1], [2, 2]]}}, 422, "shape.vertices"),
    ({"job_id": "JOB", "shape": {"type": "polygon", "vertices": [[1, 1], [2, "x"], [3, 3]]}}, 400, "shape.vertices[1][1]"),
    ({"job_id": "JOB", "shape": {"type": "star", "ra": 1, "dec": 1}}, 422, "shape.type"),
    ({"job_id": "JOB", "shape": {"type": "point", "ra": 1, "dec": 1}, "colour": "red"}, 400, "colour"),
    ({"job_id": "JOB", "shape": {"type": "point", "ra": 1, "dec": 1}, "note": 5}, 400, "note"),
    ({"job_id": "no-such-job", "shape": {"type": "point", "ra": 1, "dec": 1}}, 404, None),
])
async def test_bad_annotations_are_refused_naming_the_field(api, script, body, status, field):
    if body.get("job_id") == "JOB":
        code, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script("x = 1\n")}})
        body = {**body, "job_id": job["id"]}
    code, answer, _ = await api.post("sky/annotations", body)
    assert code == status, answer
    assert set(answer) >= {"error", "message", "field"}
    if field is not None:
        assert answer["field"] == field


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


async def test_snapshots_are_saved_listed_and_reopened(api):
    png = _png()
    view = {"ra": 150.0, "dec": 2.0, "fov": 0.5, "projection": "TAN", "layers": [{"job_id": "x"}],
            "annotations": [{"shape": {"type": "point", "ra": 150, "dec": 2}}]}
    code, snap, _ = await api.post("sky/snapshots", {"name": "field A", "view": view,
                                                     "png": "data:image/png;base64," + base64.b64encode(png).decode()})
    assert code == 201, snap
    code, listed, _ = await api.get("sky/snapshots")
    assert [s["name"] for s in listed["items"]] == ["field A"]
    code, again, _ = await api.get(f"sky/snapshots/{snap['id']}")
    assert code == 200 and again["view"] == view
    resp = await api.fetch("cosmic-horizons", "api", "sky", "snapshots", snap["id"], "png")
    assert resp.body == png and resp.headers["Content-Type"] == "image/png"
    # Saved again under its name: replaced, the same id, the new view (and no picture now).
    code, again, _ = await api.post("sky/snapshots", {"name": "field A", "view": {**view, "fov": 2.0}})
    assert code == 200 and again["id"] == snap["id"] and again["view"]["fov"] == 2.0 and again["png_url"] is None
    code, listed, _ = await api.get("sky/snapshots")
    assert [s["id"] for s in listed["items"]] == [snap["id"]]


@pytest.mark.parametrize("body, status, field", [
    ({"view": {"ra": 1, "dec": 1, "fov": 1}}, 400, "name"),
    ({"name": "a", "view": {"ra": 1, "dec": 1}}, 400, "view.fov"),
    ({"name": "a", "view": {"ra": 1, "dec": 100, "fov": 1}}, 422, "view.dec"),
    ({"name": "a", "view": {"ra": 1, "dec": 1, "fov": 1}, "png": "not base64!"}, 400, "png"),
    ({"name": "a", "view": {"ra": 1, "dec": 1, "fov": 1}, "png": base64.b64encode(b"GIF89a....").decode()}, 422, "png"),
    ({"name": "", "view": {"ra": 1, "dec": 1, "fov": 1}}, 422, "name"),
    ({"name": "a", "view": {"ra": 1, "dec": 1, "fov": 1, "job_ids": ["x", 3]}}, 400, "view.job_ids[1]"),
    ({"name": "a", "view": {"ra": 1, "dec": 1, "fov": 1, "projection": "X" * 17}}, 422, "view.projection"),
])
async def test_bad_snapshots_are_refused_naming_the_field(api, body, status, field):
    code, answer, _ = await api.post("sky/snapshots", body)
    assert code == status and answer["field"] == field, answer
