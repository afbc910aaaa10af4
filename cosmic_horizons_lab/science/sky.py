"""The sky's science, for the server's science worker: footprints, coverage MOCs and region files.

The server never imports astropy, mocpy or regions (it runs without the science extra); it runs
``python -m cosmic_horizons_lab.science.sky <command> <request.json>`` through
``server/science_worker.py`` and reads one JSON answer:

- ``footprints``: ``{"items": [{"key", "image"?: FITS path, "dataset"?: visibility path}]}`` →
  ``[{"key", "ra_deg", "dec_deg", "radius_deg", "basis"} | {"key", "error"}]``. From an image:
  its centre pixel and the largest distance to a corner (the image's extent). From visibilities:
  the phase centre and the primary beam's half width at half power at the lowest frequency.
- ``moc``: ``{"cones": [[ra, dec, radius_deg]…], "order": n}`` → the union as IVOA MOC JSON.
- ``regions``: ``{"annotations": [...], "format": "ds9"|"crtf"}`` → ``{"text": ...}`` written by
  astropy-regions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: A dish of this diameter is assumed when the data does not say (the VLA's 25 m).
DEFAULT_DISH_M = 25.0


def image_footprint(path: str | Path) -> dict[str, float]:
    """Centre and radius (degrees) of a FITS image's extent, from its celestial WCS."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(path) as hdul:
        header = hdul[0].header
    wcs = WCS(header).celestial
    nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
    centre = wcs.pixel_to_world((nx - 1) / 2, (ny - 1) / 2)
    corners = wcs.pixel_to_world([-0.5, nx - 0.5, -0.5, nx - 0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5])
    radius = max(centre.separation(c).deg for c in corners)
    centre = SkyCoord(centre).icrs
    return {"ra_deg": float(centre.ra.deg), "dec_deg": float(centre.dec.deg), "radius_deg": float(radius)}


def dataset_footprint(path: str | Path) -> dict[str, float]:
    """Phase centre and primary-beam radius (HWHM ≈ 0.5·1.02 λ/D at the lowest frequency) of visibilities."""
    import numpy as np
    from pyuvdata import UVData

    from cosmic_horizons_lab.science.visibilities import quiet

    with quiet():
        uv = UVData.from_file(str(path), read_data=False)
    cat = uv.phase_center_catalog[int(uv.phase_center_id_array[0])]
    diameters = getattr(uv.telescope, "antenna_diameters", None)
    dish = float(np.min(diameters)) if diameters is not None and len(diameters) else DEFAULT_DISH_M
    wavelength = 299_792_458.0 / float(np.min(uv.freq_array))
    return {"ra_deg": float(np.degrees(cat.get("cat_lon", 0.0))) % 360.0,
            "dec_deg": float(np.degrees(cat.get("cat_lat", 0.0))),
            "radius_deg": float(np.degrees(0.5 * 1.02 * wavelength / dish))}


def footprints(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        try:
            if item.get("image"):
                out.append({"key": item["key"], "basis": "image", **image_footprint(item["image"])})
            elif item.get("dataset"):
                out.append({"key": item["key"], "basis": "dataset", **dataset_footprint(item["dataset"])})
            else:
                out.append({"key": item["key"], "error": "nothing to read a footprint from"})
        except Exception as exc:  # one unreadable file must not lose the others' footprints
            out.append({"key": item["key"], "error": f"{type(exc).__name__}: {exc}"[:300]})
    return out


def coverage_moc(cones: list[list[float]], order: int) -> dict[str, list[int]]:
    """The union of cones as an IVOA MOC JSON object, at ``order``."""
    import astropy.units as u
    from mocpy import MOC

    moc = None
    for ra, dec, radius in cones:
        cone = MOC.from_cone(lon=float(ra) * u.deg, lat=float(dec) * u.deg, radius=float(radius) * u.deg,
                             max_depth=order)
        moc = cone if moc is None else moc.union(cone)
    if moc is None:
        return {}
    return {str(k): [int(i) for i in v] for k, v in moc.serialize(format="json").items()}


def region_text(annotations: list[dict[str, Any]], fmt: str) -> str:
    """Annotations as a DS9 or CRTF region file, written by astropy-regions."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from regions import CircleSkyRegion, PointSkyRegion, PolygonSkyRegion, RegionMeta, Regions

    regions = []
    for a in annotations:
        shape = a["shape"]
        # DS9 keeps a note as the region's text; CRTF as its label.
        meta = RegionMeta({"label" if fmt == "crtf" else "text": a.get("note") or ""})
        if shape["type"] == "point":
            regions.append(PointSkyRegion(SkyCoord(shape["ra"], shape["dec"], unit="deg"), meta=meta))
        elif shape["type"] == "circle":
            regions.append(CircleSkyRegion(SkyCoord(shape["ra"], shape["dec"], unit="deg"),
                                           shape["radius"] * u.deg, meta=meta))
        else:
            ra, dec = zip(*shape["vertices"])
            regions.append(PolygonSkyRegion(SkyCoord(list(ra), list(dec), unit="deg"), meta=meta))
    return Regions(regions).serialize(format=fmt)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command, request = args[0], json.loads(Path(args[1]).read_text())
    if command == "footprints":
        answer: Any = footprints(request["items"])
    elif command == "moc":
        answer = coverage_moc(request["cones"], int(request["order"]))
    elif command == "regions":
        answer = {"text": region_text(request["annotations"], request["format"])}
    else:
        raise SystemExit(f"unknown command {command!r}")
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
