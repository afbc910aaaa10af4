"""Finding the Jupyter server a notebook's ``Lab()`` talks to.

A kernel does not know which server started it: on a plain JupyterLab it reads
the running-server list (preferring its parent process), on a JupyterHub
single-user server the hub's ``JUPYTERHUB_*`` variables, and anywhere the
explicit ``COSMIC_HORIZONS_URL``/``COSMIC_HORIZONS_TOKEN`` (how the notebook
tests point a kernel at a server from outside it). Kept apart from ``Lab`` so
the rules can be read, and tested, on their own.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

__all__ = ["ServerNotFound", "find_server"]


class ServerNotFound(RuntimeError):
    """No Jupyter server to talk to: pass ``url=`` (and ``token=``)."""


def _ancestors(pid: int) -> set[int]:
    try:
        import psutil

        return {p.pid for p in psutil.Process(pid).parents()}
    except Exception:
        return set()


def _running_servers() -> list[dict[str, Any]]:
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return []
    return list(list_running_servers())


def find_server(url: str | None = None, token: str | None = None) -> tuple[str, str | None, dict[str, Any]]:
    """Where the API is: ``(server url, token, server info)``.

    In order: the ``url=``/``token=`` given; ``COSMIC_HORIZONS_URL`` (and
    ``COSMIC_HORIZONS_TOKEN``); on a JupyterHub single-user server, the hub's
    environment (``JUPYTERHUB_SERVICE_URL`` or ``JUPYTERHUB_SERVICE_PREFIX``,
    with ``JUPYTERHUB_API_TOKEN``); else the running-server list, preferring
    the server this kernel is a child of, then one whose root holds the
    working directory, then the newest.
    """
    if url:
        return url, token if token is not None else os.environ.get("COSMIC_HORIZONS_TOKEN"), {}
    if os.environ.get("COSMIC_HORIZONS_URL"):
        return os.environ["COSMIC_HORIZONS_URL"], token or os.environ.get("COSMIC_HORIZONS_TOKEN"), {}

    servers = _running_servers()
    hub_token = os.environ.get("JUPYTERHUB_API_TOKEN")
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if hub_token and (os.environ.get("JUPYTERHUB_SERVICE_URL") or prefix):
        hub_url = os.environ.get("JUPYTERHUB_SERVICE_URL")
        info = next((s for s in servers if prefix and s.get("base_url") == prefix), {})
        if not hub_url:
            hub_url = info.get("url") or f"http://127.0.0.1:{os.environ.get('JUPYTERHUB_SERVICE_PORT', 8888)}{prefix}"
        elif prefix and urllib.parse.urlparse(hub_url).path in ("", "/"):
            hub_url = hub_url.rstrip("/") + prefix
        # Some spawners give the address the server binds (all interfaces): talk to it locally.
        hub_url = hub_url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
        return hub_url, token or hub_token, info

    if not servers:
        raise ServerNotFound(
            "No running Jupyter server found. Start JupyterLab with this package installed, "
            "or pass Lab(url='http://host:port/', token='...')."
        )
    ancestors = _ancestors(os.getpid())
    cwd = Path.cwd().resolve()

    def rank(info: dict[str, Any]) -> tuple[int, int, float]:
        root = info.get("root_dir") or info.get("notebook_dir") or ""
        try:
            inside = cwd.is_relative_to(Path(root).resolve()) if root else False
        except OSError:
            inside = False
        return (info.get("pid") in ancestors, inside, float(info.get("pid", 0)))

    info = max(servers, key=rank)
    return info["url"], token if token is not None else (info.get("token") or None), info
