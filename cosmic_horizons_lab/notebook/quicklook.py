"""Quick-look pictures of image results: RA/Dec axes from the WCS, found sources circled.

matplotlib and astropy are imported when a picture is asked for, never at
package import (the server and the executor do not need them).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable


def _image_and_header(image: Any) -> tuple[Any, Any]:
    """(2-D array, FITS header or None) from an HDUList, an HDU, a path or an array."""
    import numpy as np
    from astropy.io import fits

    header = None
    if isinstance(image, (str, Path)):
        with fits.open(image) as hdul:
            return _image_and_header(fits.HDUList([h.copy() for h in hdul]))
    if isinstance(image, fits.HDUList):
        image = next((h for h in image if getattr(h, "data", None) is not None and h.data.ndim >= 2), image[0])
    if hasattr(image, "header") and hasattr(image, "data"):
        header, data = image.header, image.data
    else:
        data = image
    data = np.asarray(data, dtype=float)
    # Radio images carry degenerate frequency and Stokes axes: keep the first plane.
    while data.ndim > 2:
        data = data[0]
    return data, header


def _celestial_wcs(header: Any) -> Any:
    if header is None:
        return None
    from astropy.wcs import WCS

    try:
        wcs = WCS(header).celestial
    except Exception:
        return None
    return wcs if wcs.naxis == 2 and wcs.has_celestial else None


def sources_from(found: Any) -> list[dict[str, Any]] | None:
    """A catalogue as a list of dicts with ``ra``/``dec`` (degrees) or ``x``/``y`` (pixels).

    Accepts an agent's result (``{"sources": [...]}``, ``{"anomalies": [...]}``,
    ``{"catalog": [...]}``), a list of dicts, or an astropy Table.
    """
    if found is None:
        return None
    if isinstance(found, dict):
        for key in ("sources", "anomalies", "catalog", "catalogue", "detections"):
            if isinstance(found.get(key), list):
                return sources_from(found[key])
        return None
    if hasattr(found, "colnames"):  # astropy Table
        return [dict(zip(found.colnames, row)) for row in found]
    if isinstance(found, list) and all(isinstance(s, dict) for s in found):
        return found
    return None


def _position(source: dict[str, Any], wcs: Any) -> tuple[float, float] | None:
    ra = source.get("ra", source.get("ra_deg", source.get("RA")))
    dec = source.get("dec", source.get("dec_deg", source.get("DEC")))
    if ra is not None and dec is not None and wcs is not None:
        x, y = wcs.world_to_pixel_values(float(ra), float(dec))
        return float(x), float(y)
    x = source.get("x", source.get("x_pix", source.get("xcentroid")))
    y = source.get("y", source.get("y_pix", source.get("ycentroid")))
    if x is not None and y is not None:
        return float(x), float(y)
    return None


def quicklook(image: Any, sources: Iterable[dict[str, Any]] | None = None, *, title: str | None = None,
              ax: Any = None, percentile: float = 99.5, cmap: str = "inferno", radius: float | None = None,
              pyplot: bool = True) -> Any:
    """Draw an image with RA/Dec axes (from its WCS, when it has one) and circle the sources.

    Returns the matplotlib Figure. ``image`` is an astropy HDUList/HDU, a FITS
    path, or a 2-D array; ``sources`` dicts with ``ra``/``dec`` in degrees (or
    ``x``/``y`` pixels) and optionally ``radius``/``r`` pixels and ``label``.

    ``pyplot=False`` draws on a Figure that pyplot does not manage (the
    object-oriented API with an Agg canvas): pyplot's global state is not
    thread-safe, and the progress panel draws its picture in a background
    thread while the user may be plotting in the kernel's.
    """
    import numpy as np
    from matplotlib.patches import Circle

    data, header = _image_and_header(image)
    wcs = _celestial_wcs(header)
    if ax is None and not pyplot:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 5.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(111, projection=wcs) if wcs is not None else fig.add_subplot(111)
    elif ax is None:
        import matplotlib

        if not _interactive_backend():
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(6, 5.2))
        ax = fig.add_subplot(111, projection=wcs) if wcs is not None else fig.add_subplot(111)
    else:
        fig = ax.figure
    finite = data[np.isfinite(data)]
    lo, hi = (np.percentile(finite, [100 - percentile, percentile]) if finite.size else (0.0, 1.0))
    shown = ax.imshow(data, origin="lower", cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1)
    unit = str(header.get("BUNIT", "")) if header is not None else ""
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=unit)
    if wcs is not None:
        ax.coords[0].set_axislabel("RA")
        ax.coords[1].set_axislabel("Dec")
        ax.coords[0].set_major_formatter("hh:mm:ss")
        ax.coords[1].set_major_formatter("dd:mm:ss")
    else:
        ax.set_xlabel("x (pixel)")
        ax.set_ylabel("y (pixel)")
    n_circled = 0
    default_r = radius or max(4.0, min(data.shape) / 40)
    for source in sources or []:
        pos = _position(source, wcs)
        if pos is None:
            continue
        r = float(source.get("radius", source.get("r", default_r)) or default_r)
        ax.add_patch(Circle(pos, r, fill=False, edgecolor="cyan", linewidth=1.2))
        label = source.get("label") or source.get("name")
        if label:
            ax.annotate(str(label), pos, xytext=(r + 2, r + 2), textcoords="offset points", color="cyan", fontsize=8)
        n_circled += 1
    ax.set_title(title or (str(header.get("OBJECT", "")) if header is not None else ""))
    fig.n_sources_circled = n_circled  # for callers and tests
    return fig


def figure_png(fig: Any, dpi: int = 90) -> bytes:
    """A Figure as PNG bytes (a pyplot figure is closed afterwards, so notebooks do not show it twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if getattr(fig, "number", None) is not None:  # pyplot's figures have a number; Figure() has none
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


def _interactive_backend() -> bool:
    import sys

    return "ipykernel" in sys.modules or "matplotlib.pyplot" in sys.modules
