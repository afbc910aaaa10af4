"""Quick-look pictures: RA/Dec axes from the image's WCS, the found sources circled."""

from __future__ import annotations

import numpy as np

from astropy.io import fits
import matplotlib  # noqa: F401  (the notebook extra installs it)

from cosmic_horizons_lab.notebook.quicklook import figure_png, quicklook, sources_from  # noqa: E402


def radio_image() -> "fits.HDUList":
    """A 4-axis radio image (RA, Dec, frequency, Stokes) with two point sources."""
    n = 64
    data = np.random.default_rng(1).normal(0, 0.01, (1, 1, n, n))
    data[0, 0, 32, 32] = 1.0
    data[0, 0, 10, 50] = 0.3
    header = fits.Header()
    header.update({
        "CTYPE1": "RA---SIN", "CRVAL1": 152.0, "CRPIX1": 33, "CDELT1": -1 / 3600, "CUNIT1": "deg",
        "CTYPE2": "DEC--SIN", "CRVAL2": 7.5, "CRPIX2": 33, "CDELT2": 1 / 3600, "CUNIT2": "deg",
        "CTYPE3": "FREQ", "CRVAL3": 3.6e10, "CRPIX3": 1, "CDELT3": 1e6,
        "CTYPE4": "STOKES", "CRVAL4": 1, "CRPIX4": 1, "CDELT4": 1, "BUNIT": "JY/BEAM", "OBJECT": "J1008+0730",
    })
    return fits.HDUList([fits.PrimaryHDU(data, header)])


def test_quicklook_has_ra_dec_axes_and_circles_sources() -> None:
    from astropy.wcs import WCS

    hdul = radio_image()
    wcs = WCS(hdul[0].header).celestial
    ra, dec = wcs.pixel_to_world_values([32, 50], [32, 10])
    sources = [{"ra_deg": float(ra[0]), "dec_deg": float(dec[0]), "label": "A"},
               {"ra_deg": float(ra[1]), "dec_deg": float(dec[1])}]
    fig = quicklook(hdul, sources)
    ax = fig.axes[0]
    assert ax.coords[0].get_axislabel() == "RA" and ax.coords[1].get_axislabel() == "Dec"
    assert fig.n_sources_circled == 2
    circles = [p for p in ax.patches]
    centres = sorted((round(c.center[0]), round(c.center[1])) for c in circles)
    assert centres == [(32, 32), (50, 10)]
    assert ax.get_title() == "J1008+0730"
    png = figure_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_sources_from_a_result_or_a_table() -> None:
    from astropy.table import Table

    assert sources_from({"sources": [{"x": 1, "y": 2}]}) == [{"x": 1, "y": 2}]
    table = Table({"ra_deg": [1.0], "dec_deg": [2.0]})
    assert sources_from(table) == [{"ra_deg": 1.0, "dec_deg": 2.0}]
    assert sources_from({"nothing": 1}) is None


def test_an_image_without_wcs_gets_pixel_axes() -> None:
    fig = quicklook(np.ones((16, 16)), [{"x": 4, "y": 4}])
    assert fig.axes[0].get_xlabel() == "x (pixel)" and fig.n_sources_circled == 1


def test_background_quicklooks_never_touch_pyplot() -> None:
    """The progress panel draws in threads; pyplot's global state is not thread-safe (issue 13)."""
    import subprocess
    import sys

    code = """
import sys, threading, numpy as np
from cosmic_horizons_lab.notebook.quicklook import quicklook, figure_png
pngs = []
def draw(i):
    pngs.append(figure_png(quicklook(np.random.default_rng(i).random((64, 64)), sources=[{"x": 10, "y": 20}], pyplot=False)))
threads = [threading.Thread(target=draw, args=(i,)) for i in range(6)]
[t.start() for t in threads]; [t.join() for t in threads]
assert len(pngs) == 6 and all(p.startswith(b"\\x89PNG") for p in pngs), [len(p) for p in pngs]
assert "matplotlib.pyplot" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
