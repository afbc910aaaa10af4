"""Packaging and configuration: auto-enabled, listed OK, configured through traitlets."""

from __future__ import annotations

import subprocess
import sys

from cosmic_horizons_lab.server.app import CosmicHorizons


def test_extension_is_enabled_and_validates():
    out = subprocess.run([sys.executable, "-m", "jupyter", "server", "extension", "list"],
                         capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert "cosmic_horizons_lab enabled" in text.replace("\x1b[32m", "").replace("\x1b[0m", "")
    assert "cosmic_horizons_lab 0.1.0 OK" in text.replace("\x1b[32m", "").replace("\x1b[0m", "")


def test_every_setting_is_a_documented_traitlet_in_the_cosmichorizons_section():
    names = ["db_url", "backend", "work_dir", "datasets_dir", "local_slots", "poll_interval", "owner", "max_body_bytes"]
    traits = CosmicHorizons.class_traits(config=True)
    for name in names:
        assert name in traits, name
        assert len(traits[name].help) > 30, f"{name} needs real help text"
    assert CosmicHorizons.__name__ == "CosmicHorizons"  # the config section: c.CosmicHorizons.backend


async def test_command_line_config_reaches_the_app(jp_configurable_serverapp, tmp_path):
    app = jp_configurable_serverapp(argv=["--CosmicHorizons.poll_interval=0.7", "--CosmicHorizons.local_slots=3",
                                          f"--CosmicHorizons.db_url=sqlite+aiosqlite:///{tmp_path}/c.db"])
    ext = next(iter(app.extension_manager.extension_apps["cosmic_horizons_lab"]))
    assert ext.poll_interval == 0.7 and ext.local_slots == 3
    assert ext.execution_backend.slot_count == 3
