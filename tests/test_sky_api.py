"""The sky API against a real server extension: footprints and coverage read from the jobs'
images (checked against astropy's WCS and mocpy) or, without an image, from their data (checked
against the file's own header, pyuvdata and the primary beam's formula), read when a job ends
without holding up its transition; annotations with their region files (read back by
astropy-regions), snapshots, and the 4xx that name the bad field."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import shutil
import threading
import time

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


async def test_a_footprint_is_read_when_its_job_ends_without_holding_it_up(api, lab, script):
    import sqlalchemy as sa

    from cosmic_horizons_lab.server.store.orm import SkyFootprint

    coverage = lab.sky.coverage
    real = coverage.worker
    gate = threading.Event()
    calls: list[str] = []
    backgrounds: list[bool] = []

    def held_worker(kind: str, args: list[str], *, background: bool = False):
        calls.append(args[0])
        backgrounds.append(background)
        gate.wait(60)  # the worker is slow: the job's transition must not wait for it
        return real(kind, args, background=background)

    async def stored(job_id: str) -> SkyFootprint | None:
        async with lab.store.read() as session:
            return await session.scalar(sa.select(SkyFootprint).where(SkyFootprint.job_id == job_id))

    coverage.worker = held_worker
    try:
        job = await _image_job(api, script, 150.0, 2.0)  # COMPLETED while the worker is held
        deadline = time.monotonic() + 20
        while "footprints" not in calls:  # read at the job's end, though no one asked for the sky
            assert time.monotonic() < deadline, "no footprint read started when the job ended"
            await asyncio.sleep(0.05)
        assert await stored(job["id"]) is None
        # nobody waits on this read: its worker yields the CPU to the server and the jobs
        assert backgrounds[calls.index("footprints")] is True
        gate.set()
        await asyncio.wait_for(coverage.idle(), 120)
    finally:
        gate.set()
        coverage.worker = real
    row = await stored(job["id"])
    assert row is not None and row.basis == "image" and row.job_status == "COMPLETED", row
    era, edec, eradius = _expected_footprint(150.0, 2.0, 64, 0.01)
    assert row.ra_deg == pytest.approx(era, abs=1e-9) and row.dec_deg == pytest.approx(edec, abs=1e-9)
    assert row.radius_deg == pytest.approx(eradius, rel=1e-9)
    # The sky request finds it ready: no worker call of its own.
    read_so_far = len(calls)
    code, body, _ = await api.get("sky/footprints")
    assert code == 200 and body["items"][0]["job_id"] == job["id"] and body["items"][0]["basis"] == "image"
    assert len(calls) == read_so_far


async def test_a_footprint_without_an_image_comes_from_the_data(api, lab, script, datasets_dir):
    """A job that writes no image, and its child (no image, no dataset of its own): the phase centre
    of the data and the primary beam's half width at half power, 0.5 × 1.02 λ/D at the lowest
    frequency, for the VLA's 25 m dishes."""
    from astropy import constants
    from astropy.io import fits
    from pyuvdata import UVData

    from cosmic_horizons_lab.data import DEMO_DATASETS

    dataset_id = "VLA.TDEM0003.1src"
    source = DEMO_DATASETS[dataset_id]
    shutil.copy(source, datasets_dir / f"{dataset_id}{source.suffix}")
    path = script("result = {'ok': True}\n", name="no_image.py")
    code, parent, _ = await api.post("jobs/submit", {"agent": "Script", "dataset_id": dataset_id,
                                                     "params": {"path": path}})
    assert code == 201, parent
    code, child, _ = await api.post("jobs/submit", {"agent": "Script", "depends_on": [parent["id"]],
                                                    "params": {"path": path}})
    assert code == 201, child
    for job in (parent, child):
        assert (await api.wait_for(job["id"], timeout=60))["status"] == "COMPLETED"
    await asyncio.wait_for(lab.sky.coverage.idle(), 120)

    # The file's own header (random-group UVFITS: the RA and DEC axes hold the phase centre;
    # the FREQ axis the channels), read without pyuvdata ...
    with fits.open(source) as hdul:
        header = hdul[0].header
    axis = {header[f"CTYPE{i}"]: i for i in range(2, header["NAXIS"] + 1)}
    ra0, dec0 = header[f"CRVAL{axis['RA']}"], header[f"CRVAL{axis['DEC']}"]
    f = axis["FREQ"]
    channels = [header[f"CRVAL{f}"] + (k + 1 - header[f"CRPIX{f}"]) * header[f"CDELT{f}"]
                for k in range(header[f"NAXIS{f}"])]
    # ... and pyuvdata's reading of the same file.
    uv = UVData.from_file(str(source), read_data=False)
    centre = uv.phase_center_catalog[int(uv.phase_center_id_array[0])]
    assert math.degrees(centre["cat_lon"]) == pytest.approx(ra0, abs=1e-6)
    assert math.degrees(centre["cat_lat"]) == pytest.approx(dec0, abs=1e-6)
    wavelength = constants.c.to_value("m/s") / min(channels)
    hwhm = math.degrees(0.5 * 1.02 * wavelength / 25.0)

    code, body, _ = await api.get("sky/footprints")
    assert code == 200, body
    by_id = {fp["job_id"]: fp for fp in body["items"]}
    for job in (parent, child):
        fp = by_id[job["id"]]
        assert fp["basis"] == "dataset" and fp["image"] is None, fp
        assert fp["ra_deg"] == pytest.approx(ra0, abs=1e-6) and fp["dec_deg"] == pytest.approx(dec0, abs=1e-6)
        assert fp["radius_deg"] == pytest.approx(hwhm, rel=1e-6)
    # At 36 GHz the VLA's primary beam is about 1.2′ across: a sanity bound on the formula's units.
    assert 0.5 / 60 < 2 * hwhm < 2.0 / 60


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
