"""cosmic-horizons-lab: run GPU reprocessing jobs for radio astronomy from JupyterLab."""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict]:
    from .extension import CosmicHorizons

    return [{"module": "cosmic_horizons_lab", "app": CosmicHorizons}]
