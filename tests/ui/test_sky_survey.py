"""A configured HiPS background (issue 14, "offline first"): an operator's ``sky_survey`` set to a
local HiPS, served by a plain HTTP server on this machine. The Sky panel's map asks that server for
the survey's ``properties`` and its tiles, and asks no other host for anything.

The HiPS is written here (a ``properties`` file, Norder0–3 tiles and the Norder3 Allsky, one flat
colour): nothing comes from the network.
"""

from __future__ import annotations

import io
import re
import threading
import urllib.parse
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port, open_lab, open_sidebar, start_lab, stop_lab

pytestmark = pytest.mark.ui

TILE = re.compile(r"/hips/Norder(\d+)/Dir(\d+)/Npix(\d+)\.png$")
PROPERTIES = """\
creator_did          = ivo://cosmic-horizons.test/P/flat
obs_title            = A flat local test survey
dataproduct_type     = image
hips_version         = 1.4
hips_release_date    = 2026-01-01T00:00Z
hips_status          = public master clonableOnce
hips_frame           = equatorial
hips_order           = 3
hips_order_min       = 0
hips_tile_width      = 512
hips_tile_format     = png
hips_pixel_scale     = 0.1145
hips_initial_ra      = 0
hips_initial_dec     = 0
hips_initial_fov     = 180
"""


def write_hips(folder: Path) -> None:
    """Every tile of orders 0..3 (one flat PNG, written once and copied) and the Norder3 Allsky."""
    from PIL import Image

    def png(size: tuple[int, int]) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, (120, 40, 160)).save(buf, format="PNG")
        return buf.getvalue()

    folder.mkdir(parents=True)
    (folder / "properties").write_text(PROPERTIES)
    tile = png((512, 512))
    for order in range(4):
        for npix in range(12 * 4**order):
            d = folder / f"Norder{order}" / f"Dir{npix // 10000 * 10000}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"Npix{npix}.png").write_bytes(tile)
    # The Allsky: the 768 order-3 tiles at 64 px, 27 to a row (HiPS 1.4, section 4.3.2).
    (folder / "Norder3" / "Allsky.png").write_bytes(png((27 * 64, 29 * 64)))


class _Handler(SimpleHTTPRequestHandler):
    """Files, with the CORS header a HiPS server sends (the page is on another port), and a log."""

    served: list[str]

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def do_GET(self) -> None:  # http.server's name
        self.served.append(self.path)
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    base = tmp_path_factory.mktemp("hips-site")
    write_hips(base / "hips")
    served: list[str] = []
    handler = type("Handler", (_Handler,), {"served": served})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(handler, directory=str(base)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hips", served
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def survey_lab(tmp_path_factory: pytest.TempPathFactory, hips: tuple[str, list[str]]) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("survey-lab")
    (base / "root").mkdir()
    server = start_lab(base / "root", base / "state", [f"--CosmicHorizons.sky_survey={hips[0]}"])
    yield server
    stop_lab(server)


def test_the_map_draws_the_configured_local_hips_and_asks_no_other_host(page, survey_lab, hips) -> None:
    url, served = hips
    hips_origin = urllib.parse.urlsplit(url)
    lab_origin = urllib.parse.urlsplit(survey_lab.url)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    assert survey_lab.request("GET", "sky/settings")["survey"] == url
    open_lab(page, survey_lab)
    open_sidebar(page, "cosmic-horizons-sky")
    page.wait_for_selector("#cosmic-horizons-sky[data-footprints]", timeout=60_000)
    # Tiles come from the configured HiPS: the page asked for them, and that server answered them.
    # With no job on the sky the map shows the whole sky, which Aladin Lite may draw from the
    # Allsky image alone (it did on some machines, for a minute): zoom in as a user would, until
    # the view needs tiles of its own.
    box = page.locator("#cosmic-horizons-sky .ch-sky-map").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for step in range(120):
        if any(TILE.search(p.split("?", 1)[0]) for p in served):
            break
        if step >= 10 and step % 4 == 0:
            page.mouse.wheel(0, -300)
        page.wait_for_timeout(500)
    assert any(p.split("?", 1)[0] == "/hips/properties" for p in served), served
    assert any(TILE.search(p.split("?", 1)[0]) for p in served), served
    tiles = [u for u in requested if TILE.search(urllib.parse.urlsplit(u).path)]
    assert tiles and all(u.startswith(url + "/") for u in tiles), tiles
    # ... and nothing was asked of any host but the lab and that HiPS server.
    others = [u for u in requested if urllib.parse.urlsplit(u).scheme in ("http", "https", "ws", "wss")
              and (urllib.parse.urlsplit(u).hostname, urllib.parse.urlsplit(u).port)
              not in {(hips_origin.hostname, hips_origin.port), (lab_origin.hostname, lab_origin.port)}]
    assert others == [], others
