"""cosmic-horizons-lab: run GPU reprocessing jobs for radio astronomy from JupyterLab."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .lab import Lab

__all__ = ["Lab", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: the server and the executor import this package and must not pay for the notebook API.
    if name == "Lab":
        from .lab import Lab

        return Lab
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict]:
    from .extension import CosmicHorizons

    return [{"module": "cosmic_horizons_lab", "app": CosmicHorizons}]
