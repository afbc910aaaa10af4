"""cosmic-horizons-lab: run GPU reprocessing jobs for radio astronomy from JupyterLab."""

from typing import TYPE_CHECKING, Any

from cosmic_horizons_lab._version import __version__

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.lab import Lab

__all__ = ["Lab", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: the server and the executor import this package and must not pay for the notebook API.
    if name == "Lab":
        from cosmic_horizons_lab.notebook.lab import Lab

        return Lab
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict]:
    from cosmic_horizons_lab.server.app import CosmicHorizons

    return [{"module": "cosmic_horizons_lab", "app": CosmicHorizons}]
