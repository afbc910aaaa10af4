"""Where the widgets' bundled views live (built from js/ into the package)."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "static"


def view(name: str) -> Path:
    """The bundled ES module of one view; a clear error when js/ was not built."""
    path = STATIC / f"{name}.js"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the widgets' views are built from js/ by the package build "
            "(pip install . runs npm), or by `npm run build` in js/."
        )
    return path


CSS = STATIC / "widgets.css"
